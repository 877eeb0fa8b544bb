"""Measure one candidate configuration of the embedded demo, end to end, and print one JSON line.

The demo (``taid-vlm demo``) must show something on a 2-core CPU in about ten minutes: a
teacher trained from scratch that clearly beats a same-budget student trained without it, and
students distilled from it (fkl, taid) under the very same budget as that sft student. This
tool runs exactly that pipeline for one setting of the levers (image size, vocabulary, model
sizes, data size, steps, batch, learning rates) and reports what the choice of preset needs:
parameter counts, seconds per step, accuracy per model and per question family, evaluation
cost, and the projected demo time.

    python scripts/demo_sizing.py --work /tmp/sizing/a \\
        --teacher '{"size": "base", "text_config": {"hidden_size": 256}}' \\
        --student 'composed:small?text.hidden_size=96&text.num_hidden_layers=2' \\
        --teacher-steps 600 --student-steps 300 --losses sft,fkl,taid

All students start from the same initial weights (built once with the teacher's tokenizer and
saved), see the same batches (same seed) and get the same steps, batch and learning rate: only
the loss differs. Timings depend on what else runs on the machine; the JSON records the load
average so a noisy measurement can be recognised.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from transformers.utils import logging as hf_logging  # noqa: E402

from ..data import CAPTION_PROMPT, VQA_SUFFIX, load_caption_eval, load_records, load_vqa_eval  # noqa: E402
from ..demo.shapes import generate_shapes  # noqa: E402
from ..eval.caption_metrics import caption_scores  # noqa: E402
from ..eval.vqa_metrics import vqa_score  # noqa: E402
from ..models import load  # noqa: E402
from ..models.composed import build_composed_vlm  # noqa: E402
from ..models.composed.factory import parse_spec  # noqa: E402
from ..train import distill, load_config  # noqa: E402
from ..train.checkpoint import checkpoint_weights  # noqa: E402
from .runner import Run, print_json  # noqa: E402

hf_logging.disable_progress_bar()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="scratch folder for data, models and runs (e.g. under /tmp)")
    p.add_argument("--name", default=None, help="label copied into the JSON line")
    data = p.add_argument_group("data")
    data.add_argument("--n-train", type=int, default=4000, help="training scenes (records)")
    data.add_argument("--n-test", type=int, default=200, help="test scenes (about 10 questions each)")
    data.add_argument("--qa-turns", type=int, default=3, help="QA turns per training record (plus one caption turn)")
    data.add_argument("--image-size", type=int, default=64)
    data.add_argument("--min-objects", type=int, default=2)
    data.add_argument("--max-objects", type=int, default=6)
    data.add_argument("--data-seed", type=int, default=0)
    models = p.add_argument_group("models (a size name, a 'composed:...' spec string or a JSON dict spec)")
    models.add_argument("--teacher", default="base")
    models.add_argument("--student", default="small")
    models.add_argument("--vocab-size", type=int, default=1024, help="BPE trained on the data's own text")
    train = p.add_argument_group("training")
    train.add_argument("--teacher-steps", type=int, default=600)
    train.add_argument("--teacher-batch", type=int, default=32)
    train.add_argument("--teacher-lr", type=float, default=2e-3)
    train.add_argument("--teacher-warmup", type=int, default=None, help="default: 5%% of the steps")
    train.add_argument("--student-steps", type=int, default=300)
    train.add_argument("--student-batch", type=int, default=32)
    train.add_argument("--student-lr", type=float, default=2e-3)
    train.add_argument("--student-warmup", type=int, default=None, help="default: 5%% of the steps")
    train.add_argument("--losses", default="sft,fkl,taid", help="student losses, comma-separated (same budget each)")
    train.add_argument("--t-start", type=float, default=0.4, help="TAID's initial interpolation")
    train.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the batch order")
    train.add_argument("--teacher-dir", default=None, help="reuse a trained teacher (skips teacher training)")
    train.add_argument("--teacher-curve", type=int, default=0,
                       help="checkpoint the teacher every N steps and report each checkpoint's VQA accuracy")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-questions", type=int, default=2000, help="VQA questions scored per model (0: none)")
    ev.add_argument("--eval-captions", type=int, default=100, help="captions scored per model (0: none)")
    ev.add_argument("--eval-batch", type=int, default=64)
    ev.add_argument("--vqa-max-new-tokens", type=int, default=8)
    ev.add_argument("--caption-max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


# ---- models ------------------------------------------------------------------------------------


def as_spec(text: str) -> dict[str, Any]:
    """A size name, a 'composed:...' string or a JSON object -> a dict spec."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    if text.startswith("composed:"):
        return parse_spec(text)
    return {"size": text}


def n_params(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters, and the share of the vision tower and of the (tied) embedding table."""
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith("vision_tower"))
    embed = model.get_input_embeddings().weight.numel()
    return {"total": total, "vision": vision, "embedding": embed}


def save_initial(spec: dict[str, Any], out: Path, image_size: int, seed: int, **build: Any) -> tuple[Any, dict[str, int]]:
    """Build a fresh model, save it with its processor, return (tokenizer, parameter counts)."""
    model, processor = build_composed_vlm(spec, image_size=image_size, seed=seed, **build)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return processor.tokenizer, n_params(model)


def training_texts(train_file: Path) -> list[str]:
    records = load_records(train_file)
    return [m["content"].replace("<image>", "") for r in records for m in r.messages]


# ---- training ----------------------------------------------------------------------------------


def train(student: str, output: Path, loss: str, steps: int, batch: int, lr: float, warmup: int | None, data: Path,
          seed: int, teacher: str | None = None, t_start: float = 0.4, save_every: int = 0) -> dict[str, Any]:
    config = load_config(None, dict(
        student=student, teacher=teacher, data=str(data), output=str(output), loss=loss, max_steps=steps,
        batch_size=batch, lr=lr, lr_scheduler="cosine", warmup_steps=max(1, steps // 20) if warmup is None else warmup,
        t_start=t_start, seed=seed, progress=False, log_every=1, overwrite=True,
        save_every=save_every or 10**9, keep_checkpoints=10**6,
    ))
    started = time.perf_counter()
    result = distill(config)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    step_seconds = sorted(r["seconds"] for r in rows if "seconds" in r and r["step"] > 1) or [float("nan")]
    return {
        "dir": str(result.student_dir), "steps": steps, "batch": batch, "seconds": round(seconds, 1),
        # Other processes on the machine slow some steps down a lot: the median and the 10th
        # percentile tell a quiet machine's speed better than the mean.
        "s_per_step": round(step_seconds[len(step_seconds) // 2], 4),
        "s_per_step_p10": round(step_seconds[len(step_seconds) // 10], 4),
        "final_loss": round(result.final_loss, 4) if result.final_loss is not None else None,
        "final_t": result.final_metrics.get("t"),
    }


# ---- evaluation --------------------------------------------------------------------------------


def with_suffix(record, suffix: str):
    messages = [dict(m) for m in record.messages]
    messages[-1]["content"] += suffix
    return record.with_messages(messages)


def generate_all(adapter, records, batch: int, max_new_tokens: int) -> list[str]:
    out: list[str] = []
    for i in range(0, len(records), batch):
        out += adapter.generate(records[i : i + batch], max_new_tokens=max_new_tokens)
    return out


def evaluate(model_dir, vqa, captions, args: argparse.Namespace) -> dict[str, Any]:
    """VQA accuracy (overall and per family) and caption scores of a model dir (or an adapter)."""
    adapter = load(model_dir, role="student", dtype="float32") if isinstance(model_dir, (str, Path)) else model_dir
    result: dict[str, Any] = {}
    torch.manual_seed(0)
    if vqa:
        started = time.perf_counter()
        answers = generate_all(adapter, [with_suffix(r, VQA_SUFFIX) for r in vqa], args.eval_batch, args.vqa_max_new_tokens)
        seconds = time.perf_counter() - started
        scores = [vqa_score(a, r.answers) for a, r in zip(answers, vqa)]
        by_family: dict[str, list[float]] = defaultdict(list)
        for s, r in zip(scores, vqa):
            by_family[r.meta.get("family", "?")].append(s)
        result.update(
            vqa=round(100 * sum(scores) / len(scores), 2), vqa_n=len(scores), vqa_seconds=round(seconds, 2),
            vqa_families={f: round(100 * sum(v) / len(v), 1) for f, v in sorted(by_family.items())},
            vqa_examples=[(r.meta.get("question"), a, sorted(r.answers)) for r, a in list(zip(vqa, answers))[:3]],
        )
    if captions:
        started = time.perf_counter()
        prompts = [with_suffix(r, "\n" + CAPTION_PROMPT) for r in captions]
        texts = generate_all(adapter, prompts, args.eval_batch, args.caption_max_new_tokens)
        seconds = time.perf_counter() - started
        scores = caption_scores({r.id: t for r, t in zip(captions, texts)}, {r.id: r.references for r in captions},
                                backend="python")
        result.update(caption_cider=round(scores["CIDEr"], 1), caption_bleu4=round(scores["BLEU-4"], 1),
                      caption_seconds=round(seconds, 2), caption_example=texts[0])
    return result


def learning_curve(init_dir: Path, run_dir: Path, vqa, args: argparse.Namespace) -> dict[int, float]:
    """VQA accuracy of every checkpoint of a run (how fast a model learns, for sizing its steps)."""
    adapter = load(str(init_dir), role="student", dtype="float32")
    curve = {}
    for checkpoint in sorted((run_dir / "checkpoints").glob("step-*")):
        adapter.model.load_state_dict(checkpoint_weights(checkpoint), strict=False)
        curve[int(checkpoint.name.split("-")[1])] = evaluate(adapter, vqa, [], args)["vqa"]
    return curve


# ---- the pipeline ------------------------------------------------------------------------------


def make_data(args: argparse.Namespace, work: Path) -> tuple[Path, float]:
    """Generate (or reuse, when the same configuration is already there) the synthetic set."""
    data = work / "data"
    wanted = {"seed": args.data_seed, "n_train": args.n_train, "n_test": args.n_test, "image_size": args.image_size,
              "qa_turns": args.qa_turns, "min_objects": args.min_objects, "max_objects": args.max_objects}
    summary = data / "summary.json"
    if summary.exists():
        have = json.loads(summary.read_text())["config"]
        if all(have.get(k) == v for k, v in wanted.items()):
            return data, 0.0
    started = time.perf_counter()
    generate_shapes(data, args.n_train, args.n_test, seed=args.data_seed, image_size=args.image_size,
                    qa_turns=args.qa_turns, min_objects=args.min_objects, max_objects=args.max_objects)
    return data, time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    measured = Run()
    report: dict[str, Any] = {"name": args.name, "args": vars(args), "load_avg_start": measured.load_at_start[0],
                              "command": measured.command}
    data, gen_seconds = make_data(args, work)
    train_file = data / "train.jsonl"
    report["data_seconds"] = round(gen_seconds, 1)

    if args.teacher_dir:
        teacher_dir = args.teacher_dir
        tokenizer = load(teacher_dir).tokenizer
        report["teacher"] = {"dir": teacher_dir, "reused": True}
    else:
        started = time.perf_counter()
        tokenizer, params = save_initial(as_spec(args.teacher), work / "teacher_init", args.image_size, args.seed,
                                         texts=training_texts(train_file), vocab_size=args.vocab_size)
        report["tokenizer_seconds"] = round(time.perf_counter() - started, 1)
        report["teacher"] = {"params": params, **train(
            str(work / "teacher_init"), work / "teacher_run", "sft", args.teacher_steps, args.teacher_batch,
            args.teacher_lr, args.teacher_warmup, train_file, args.seed, save_every=args.teacher_curve)}
        teacher_dir = report["teacher"]["dir"]
    report["vocab"] = len(tokenizer)

    _, student_params = save_initial(as_spec(args.student), work / "student_init", args.image_size, args.seed,
                                     tokenizer=tokenizer)
    students = {}
    for loss in [x.strip() for x in args.losses.split(",") if x.strip()]:
        students[loss] = {"params": student_params, **train(
            str(work / "student_init"), work / f"student_{loss}", loss, args.student_steps, args.student_batch,
            args.student_lr, args.student_warmup, train_file, args.seed,
            teacher=None if loss == "sft" else teacher_dir, t_start=args.t_start)}
    report["students"] = students

    vqa = load_vqa_eval(data / "test_vqa.jsonl")[: args.eval_questions] if args.eval_questions else []
    captions = load_caption_eval(data / "test_caption.jsonl")[: args.eval_captions] if args.eval_captions else []
    report["teacher"].update(evaluate(teacher_dir, vqa, captions, args))
    if args.teacher_curve and not args.teacher_dir:
        report["teacher"]["curve"] = learning_curve(work / "teacher_init", work / "teacher_run", vqa, args)
    for info in students.values():
        info.update(evaluate(info["dir"], vqa, captions, args))

    report["summary"] = summarise(report)
    report["load_avg_end"] = os.getloadavg()[0]
    report["seconds"] = round(measured.seconds, 1)
    return report


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers, and the demo's projected wall time (every phase as measured)."""
    teacher, students = report["teacher"], report["students"]
    models = [teacher, *students.values()]
    eval_seconds = sum(m.get("vqa_seconds", 0) + m.get("caption_seconds", 0) for m in models)
    train_seconds = teacher.get("seconds", 0) + sum(s["seconds"] for s in students.values())
    out = {
        "vqa": {"teacher": teacher.get("vqa"), **{k: s.get("vqa") for k, s in students.items()}},
        "teacher_minus_sft": round(teacher["vqa"] - students["sft"]["vqa"], 2) if "sft" in students and "vqa" in teacher else None,
        "params": {"teacher": teacher.get("params", {}).get("total"),
                   "student": next(iter(students.values()))["params"]["total"] if students else None},
        "s_per_step": {"teacher": teacher.get("s_per_step"), **{k: s["s_per_step"] for k, s in students.items()}},
        "train_seconds": round(train_seconds, 1),
        # What the demo would take on a quiet machine: steps x median step time, plus evaluation.
        "projected_train_seconds": round(sum(m["s_per_step"] * m["steps"] for m in models if "steps" in m), 1),
        "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(report["data_seconds"] + report.get("tokenizer_seconds", 0) + train_seconds + eval_seconds, 1),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_json(report)
    print(json.dumps(report["summary"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
