"""``taid-vlm demo``: the whole pipeline on the embedded synthetic set, offline, on a CPU.

1. generate the shapes set (train / VQA test / caption test);
2. build a tokenizer and the initial teacher and student from configs;
3. train the teacher from scratch (cached: a second run with the same settings reuses it);
4. distil students of one small size with each loss (sft = no teacher, fkl, taid) under an
   identical budget (same initial weights, steps, batch, lr and seed) on a small transfer set,
   the first ``preset.transfer_records`` training scenes: the teacher knows more than they see;
5. evaluate teacher and students with the eval harness (VQA accuracy per family, CIDEr, BLEU-4);
6. write ``report.md`` with the table, settings, run time, how to reproduce, and the plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import load_records
from ..errors import UserError
from ..eval import EvalConfig, run_evaluation
from ..files import write_text_atomically
from ..losses import loss_class
from ..models.composed import build_composed_vlm
from ..models.text_lm import build_text_lm
from ..models.tokenizer import train_bpe_tokenizer
from ..train import DistillConfig, distill, load_config
from .presets import DemoPreset, TrainBudget
from .shapes import generate_shapes

KEY_FILE = "demo_key.json"
DEMO_MARKER = ".taid-demo"


@dataclass
class DemoResult:
    output: Path
    preset: str
    text: bool
    seed: int
    rows: list[dict[str, Any]]  # one per model: name, params, accuracy, CIDEr, BLEU-4, ...
    by_family: dict[str, dict[str, float]]
    phase_seconds: dict[str, float]
    report: Path
    teacher_reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.phase_seconds.values())


class _Phases:
    """Prints one line per phase and records how long each took."""

    def __init__(self, total: int, verbose: bool):
        self.total, self.verbose, self.index = total, verbose, 0
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        self.index += 1
        if self.verbose:
            print(f"[{self.index}/{self.total}] {name} ...", flush=True)
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - started
        if self.verbose:
            print(f"[{self.index}/{self.total}] {name}: {self.seconds[name]:.0f} s", flush=True)
        return result


def run_demo(out: str | Path, preset: DemoPreset, text: bool = False, seed: int = 0, progress: bool = True,
             losses: tuple[str, ...] | None = None, overwrite: bool = False) -> DemoResult:
    out = Path(out)
    claim_demo_dir(out, overwrite)
    losses = tuple(losses or preset.losses)
    phases = _Phases(6, progress)
    data_dir = phases.run("data", prepare_data, out / "data", preset, text, seed)
    init = phases.run("initial models", initial_models, out / "init", data_dir, preset, text, seed)
    teacher_dir, reused = phases.run("teacher training", train_teacher, out / "teacher", init["teacher"], data_dir,
                                     preset.teacher_budget, seed, progress)

    student_data = transfer_data(out / "transfer", data_dir, preset.transfer_records) if preset.transfer_records else data_dir

    def students() -> dict[str, Path]:
        return {loss: distil_student(out / "students" / loss, init["student"], teacher_dir, student_data, loss,
                                     preset.student_budget, seed, preset.t_start, progress) for loss in losses}

    runs = phases.run("student distillation", students)
    models = {"teacher": teacher_dir, **{f"{loss} student": d / "student" for loss, d in runs.items()}}
    scores = phases.run("evaluation", evaluate_models, out / "eval", models, data_dir, preset, progress)
    from .report import write_report

    result = DemoResult(out, preset.name, text, seed, scores["rows"], scores["by_family"], {}, out / "report.md", reused,
                        extra={"students": {k: str(v) for k, v in runs.items()}, "teacher_dir": str(teacher_dir),
                               "data_dir": str(data_dir), "majority": majority_baseline(data_dir)})
    phases.run("report", write_report, result, preset)
    result.phase_seconds = phases.seconds
    write_report(result, preset)  # again, now with the report phase's own time in the table
    return result


def claim_demo_dir(out: Path, overwrite: bool) -> None:
    """The demo replaces its own subfolders freely, so it only works in an empty folder or one it
    made before (``DEMO_MARKER``); anything else needs ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"demo --out {out} is a file; choose a folder")
    foreign = out.is_dir() and any(out.iterdir()) and not (out / DEMO_MARKER).is_file()
    if foreign and not overwrite:
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise UserError(f"demo --out {out} holds files the demo did not write ({shown}); the demo replaces its "
                        "data/, init/, teacher/, students/ and eval/ there. Choose a new folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by taid-vlm demo; its subfolders are replaced on every run\n")


# ---- building blocks (the benchmarks of taid_vlm.bench build on them too) ----------------------


def is_cached(directory: Path, key: dict[str, Any]) -> bool:
    """Whether ``directory`` holds what ``key`` describes (its ``KEY_FILE`` says so): then it is reused."""
    marker = directory / KEY_FILE
    return marker.is_file() and json.loads(marker.read_text()) == key


def mark_cached(directory: Path, key: dict[str, Any]) -> None:
    """Record that ``directory`` now holds what ``key`` describes (written last, once it is complete)."""
    write_text_atomically(directory / KEY_FILE, json.dumps(key, indent=1, sort_keys=True))


def content_digest(model_dir: Path) -> str:
    """Content hash of a (small) checkpoint: the cache key of whatever is trained from it."""
    digest = hashlib.sha256()
    for file in sorted(model_dir.iterdir()):
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def key_of(directory: Path) -> dict[str, Any]:
    """The key a cached folder was made with (what is trained from it extends it)."""
    return json.loads((directory / KEY_FILE).read_text())


def prepare_data(directory: Path, preset: DemoPreset, text: bool, seed: int) -> Path:
    """The shapes set for this preset (regenerated only when its settings change)."""
    key = {**preset.key("n_train", "n_test", "image_size", "qa_turns"), "text": text, "seed": seed}
    if not is_cached(directory, key):
        shutil.rmtree(directory, ignore_errors=True)
        generate_shapes(directory, preset.n_train, preset.n_test, seed=seed, image_size=preset.image_size, text=text,
                        qa_turns=preset.qa_turns)
        mark_cached(directory, key)
    return directory


def transfer_data(directory: Path, data_dir: Path, n_records: int) -> Path:
    """The first ``n_records`` training scenes of ``data_dir`` as a data folder of their own (test
    files copied, images shared through a link): what the students see in the transfer regime.

    Rebuilt only when the full set or the count changed; its key extends the full set's, so every
    run trained on it is keyed by both.
    """
    key = {**key_of(data_dir), "transfer_records": n_records}
    if is_cached(directory, key):
        return directory
    lines = (data_dir / "train.jsonl").read_text().splitlines()
    if len(lines) < n_records:
        raise UserError(f"the transfer set needs {n_records} scenes but {data_dir / 'train.jsonl'} has {len(lines)}; "
                        "lower transfer_records or raise n_train")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    write_text_atomically(directory / "train.jsonl", "\n".join(lines[:n_records]) + "\n")
    for name in ("test_vqa.jsonl", "test_caption.jsonl", "summary.json"):
        if (data_dir / name).is_file():
            shutil.copy(data_dir / name, directory / name)
    if (data_dir / "images").is_dir():
        # relative, so the work folder can be moved or copied as a whole
        target = os.path.relpath((data_dir / "images").resolve(), directory.resolve())
        (directory / "images").symlink_to(target, target_is_directory=True)
    mark_cached(directory, key)
    return directory


def shared_tokenizer(data_dir: Path, vocab_size: int):
    """One BPE trained on the training conversations: teacher and students share it."""
    texts = [m["content"] for r in load_records(data_dir / "train.jsonl") for m in r.messages]
    return train_bpe_tokenizer(texts, vocab_size=vocab_size)


def save_initial_model(path: Path, spec: dict[str, Any], tokenizer, text: bool, image_size: int, seed: int) -> Path:
    """An untrained model saved like any checkpoint: a causal LM (text) or a composed VLM."""
    if text:
        model, processor = build_text_lm(spec, tokenizer, seed=seed), tokenizer
    else:
        model, processor = build_composed_vlm({**spec, "image_size": image_size}, tokenizer=tokenizer, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def initial_models(directory: Path, data_dir: Path, preset: DemoPreset, text: bool, seed: int) -> dict[str, Path]:
    """Untrained teacher and student sharing one tokenizer (cached by settings)."""
    key = {**preset.key("vocab_size", "teacher", "student", "text_teacher", "text_student", "image_size"),
           "data": key_of(data_dir), "text": text, "seed": seed}
    paths = {"teacher": directory / "teacher", "student": directory / "student"}
    if is_cached(directory, key):
        return paths
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    tokenizer = shared_tokenizer(data_dir, preset.vocab_size)
    save_initial_model(paths["teacher"], preset.text_teacher if text else preset.teacher, tokenizer, text, preset.image_size, seed + 101)
    save_initial_model(paths["student"], preset.text_student if text else preset.student, tokenizer, text, preset.image_size, seed + 202)
    mark_cached(directory, key)
    return paths


def train_teacher(directory: Path, init_dir: Path, data_dir: Path, budget: TrainBudget, seed: int,
                  progress: bool) -> tuple[Path, bool]:
    """Train the teacher from scratch with cross entropy; reuse it when nothing changed."""
    key = {"budget": dataclasses.asdict(budget), "init": content_digest(init_dir), "data": key_of(data_dir), "seed": seed}
    if is_cached(directory, key) and (directory / "student").is_dir():
        return directory / "student", True
    config = DistillConfig(
        student=str(init_dir), data=str(data_dir / "train.jsonl"), output=str(directory), loss="sft",
        max_steps=budget.steps, lr=budget.lr, batch_size=budget.batch_size, warmup_steps=budget.warmup_steps,
        save_every=budget.steps, log_every=5, seed=seed, progress=progress, overwrite=True,
    )  # fmt: skip
    distill(config.validate())
    mark_cached(directory, key)
    return directory / "student", False


def distil_student(run_dir: Path, init_dir: Path, teacher_dir: Path | None, data_dir: Path, loss: str,
                   budget: TrainBudget, seed: int, t_start: float, progress: bool, **config: Any) -> Path:
    """One student run; every loss gets the same initial weights, data order and budget."""
    # load_config: ``config`` may name loss settings by their recipe keys (taid_adaptive, taid.alpha_per_run)
    distill(load_config(None, dict(
        student=str(init_dir), teacher=str(teacher_dir) if loss_class(loss).needs_teacher else None, data=str(data_dir / "train.jsonl"),
        output=str(run_dir), loss=loss, max_steps=budget.steps, lr=budget.lr, batch_size=budget.batch_size,
        warmup_steps=budget.warmup_steps, t_start=t_start, save_every=budget.steps, log_every=5, seed=seed,
        progress=progress, overwrite=True, **config,
    )))  # fmt: skip
    return run_dir


def evaluate_models(directory: Path, models: dict[str, Path], data_dir: Path, preset: DemoPreset,
                    progress: bool) -> dict[str, Any]:
    """VQA accuracy (overall and per family) and caption metrics for every model, one table."""
    names, paths = list(models), [str(p) for p in models.values()]
    vqa = run_evaluation(EvalConfig(
        models=paths, data=str(data_dir / "test_vqa.jsonl"), task="vqa", output=str(directory / "vqa"), labels=names,
        batch_size=preset.eval_batch_size, limit=preset.eval_questions, progress=progress,
    ))  # fmt: skip
    captions = run_evaluation(EvalConfig(
        models=paths, data=str(data_dir / "test_caption.jsonl"), task="caption", output=str(directory / "caption"),
        labels=names, batch_size=preset.eval_batch_size, limit=preset.eval_captions, progress=progress,
        caption_backend=preset.caption_backend,
    ))  # fmt: skip
    rows, by_family = [], {}
    for name, path in models.items():
        v, c = vqa["models"][name], captions["models"][name]
        rows.append({
            "model": name, "params": _params(Path(path)), "vqa_accuracy": v["metrics"]["accuracy"], "vqa_n": v["n"],
            "vqa_empty": v["metrics"].get("n_empty", 0), "vqa_rules": v["metrics"].get("vqa_rules"), "CIDEr": c["metrics"].get("CIDEr"), "BLEU-4": c["metrics"].get("BLEU-4"),
            "caption_n": c["n"], "caption_backend": c["metrics"].get("backend"),
        })  # fmt: skip
        by_family[name] = {fam: stats["accuracy"] for fam, stats in v["extra"]["by_family"].items()}
    return {"rows": rows, "by_family": by_family}


def _params(model_dir: Path) -> int:
    """Parameter count read from the checkpoint's shapes (tied weights are stored once)."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += sum(prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def majority_baseline(data_dir: Path) -> dict[str, Any]:
    """Always answering each family's most common answer: the floor any model must beat."""
    summary = json.loads((data_dir / "summary.json").read_text())
    return {"overall": summary["majority_baseline"],
            "by_family": {name: fam["majority_baseline"] for name, fam in summary["families"].items()}}
