"""The quality benchmark's same-data regime: teacher and students learn from the demo's scenes set.

Part ``zoo``: one trained teacher; for every loss of the zoo (and TAID with the linear schedule
only) and every seed, a student of the demo's student size is distilled under the same budget
(steps, batch, lr); the seed sets the student's initial weights and data order. Reports mean +-
std (over seeds) of VQA accuracy and CIDEr-D, and the share of the sft -> teacher gap each loss
closes. Part ``gap``: teachers of growing size (each trained from scratch, bigger ones for more
steps), one student size, students distilled with taid, fkl and skew_fkl. Part ``taid``: TAID's
own settings on the zoo's teacher and seeds. Outputs: ``OUT/{zoo,gap,taid}.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from ..results import write_result, write_table
from ..runner import Run, print_json
from ..runs import reused_or_distilled
from . import report
from .report import pyplot, save_figure
from .stats import mean_std

ZOO = ("sft", "fkl", "rkl", "tvd", "gjsd", "skew_fkl", "skew_rkl", "akl", "ctkd", "dkd", "taid", "taid_linear")
GAP_LOSSES = ("taid", "fkl", "skew_fkl")


# Part 3, ``taid``: where TAID does not win at a short budget, which of its settings matters.
# t_start decides how far from the student's own distribution the first targets are; alpha
# decides whether the adaptive rule can move t at all in a run this short (alpha * N / 2 < 1
# with the paper's alpha: t just follows the linear floor).
TAID_VARIANTS = {
    "taid_t0.2": {"t_start": 0.2},
    "taid_t0.7": {"t_start": 0.7},
    "taid_alpha_per_run4": {"taid_alpha_per_run": 4.0},
}


def loss_config(name: str) -> tuple[str, dict]:
    """A zoo entry -> (loss name, extra config); ``taid_linear`` is TAID without the adaptive rule."""
    if name == "taid_linear":
        return "taid", {"taid_adaptive": False}
    if name in TAID_VARIANTS:
        return "taid", dict(TAID_VARIANTS[name])
    return name, {}


def teacher_ladder(preset) -> list[tuple[str, dict, object]]:
    """Three teachers of growing size ending at the preset's teacher, bigger ones trained longer.

    Both halves grow: the encoder's channels and the LM's width and depth (on the scenes the
    encoder decides most of what a model can see, so growing the LM alone barely moves it).
    """
    from ...demo.presets import text_config

    base = preset.teacher
    text = base["text_config"]
    channels = base["vision_kwargs"].get("channels")
    ladder = []
    for name, scale, steps_factor in (("S", 0.5, 0.75), ("M", 0.75, 1.0), ("L", 1.0, 1.25)):
        hidden = max(64, int(text["hidden_size"] * scale) // 32 * 32)
        vision_kwargs = dict(base["vision_kwargs"])
        if channels:
            vision_kwargs["channels"] = [max(8, int(c * scale) // 8 * 8) for c in channels]
        spec = {**base, "vision_kwargs": vision_kwargs,
                "text_config": {**text, **text_config(hidden, max(1, round(text["num_hidden_layers"] * scale)))}}
        budget = dataclasses.replace(preset.teacher_budget, steps=int(preset.teacher_budget.steps * steps_factor))
        ladder.append((name, spec, budget))
    return ladder


def teacher_cache(work: Path, teacher_dir: Path, data_dir: Path, top_k: int) -> Path:
    """The teacher's top-k log-probs over the training set, computed once for the whole sweep
    (every loss and seed reads them; a finished cache is reused, an interrupted one resumed)."""
    from ...data import load_records
    from ...models import load
    from ...teacher_cache import build_cache

    out = work / f"teacher-cache-k{top_k}"
    build_cache(load(str(teacher_dir), role="teacher"), str(teacher_dir), load_records(data_dir / "train.jsonl"), out,
                top_k=top_k, progress=False)
    return out


def run_zoo(part: str, names: list[str], seeds: list[int], preset, work: Path, data_dir: Path, tokenizer,
            teacher_dir: Path, teacher_row: dict, cache_dir: Path | None = None) -> dict:
    from ...demo.pipeline import evaluate_models, save_initial_model

    per_loss: dict[str, list[dict]] = {name: [] for name in names}
    for seed in seeds:
        init = save_initial_model(work / f"init-student-{seed}", preset.student, tokenizer, False, preset.image_size, 202 + seed)
        students = {}
        for name in names:
            loss, extra = loss_config(name)
            t_start = extra.pop("t_start", preset.t_start)
            if cache_dir is not None and loss != "sft":
                extra["teacher_cache"] = str(cache_dir)
            run = reused_or_distilled(work / f"zoo-{name}-{seed}", init, teacher_dir, data_dir, loss, preset.student_budget,
                                      seed, t_start, progress=False, **extra)
            students[name] = run / "student"
            print(f"  {part}: {name} seed {seed} trained", flush=True)
        scores = evaluate_models(work / f"{part}-eval-{seed}", students, data_dir, preset, progress=False)
        for row in scores["rows"]:
            per_loss[row["model"]].append(row)
        print(f"  {part}: seed {seed}: " + ", ".join(f"{r['model']} {r['vqa_accuracy']:.1f}" for r in scores["rows"]), flush=True)
    table = []
    sft_mean = mean_std([r["vqa_accuracy"] for r in per_loss["sft"]])[0] if "sft" in per_loss else None
    for name, rows in per_loss.items():
        acc, acc_sd = mean_std([r["vqa_accuracy"] for r in rows])
        cider, cider_sd = mean_std([r["CIDEr"] for r in rows])
        gap = None
        if sft_mean is not None and teacher_row["vqa_accuracy"] > sft_mean:
            gap = (acc - sft_mean) / (teacher_row["vqa_accuracy"] - sft_mean)
        table.append({"loss": name, "vqa_mean": acc, "vqa_std": acc_sd, "cider_mean": cider, "cider_std": cider_sd,
                      "gap_closed": gap, "per_seed_vqa": [r["vqa_accuracy"] for r in rows],
                      "vqa_n": sorted({r["vqa_n"] for r in rows}), "caption_backend": sorted({r["caption_backend"] for r in rows})})
    return {"teacher": teacher_row, "rows": table, "seeds": list(seeds), "caption_backends": caption_backends(per_loss)}


def caption_backends(per_loss: dict[str, list[dict]]) -> list[str]:
    """Every caption backend that scored a row of this part (one, unless Java came and went)."""
    return sorted({r["caption_backend"] for rows in per_loss.values() for r in rows})


def run_gap(args, preset, work: Path, data_dir: Path, tokenizer) -> dict:
    from ...demo.pipeline import evaluate_models, save_initial_model, train_teacher

    rows = []
    for name, spec, budget in teacher_ladder(preset):
        init = save_initial_model(work / f"init-teacher-{name}", spec, tokenizer, False, preset.image_size, 101)
        teacher_dir, _ = train_teacher(work / f"gap-teacher-{name}", init, data_dir, budget, 0, progress=False)
        teacher_score = evaluate_models(work / f"gap-eval-teacher-{name}", {"teacher": teacher_dir}, data_dir, preset, False)["rows"][0]
        for seed in args.gap_seeds:
            student_init = save_initial_model(work / f"init-student-{seed}", preset.student, tokenizer, False, preset.image_size, 202 + seed)
            students = {loss: reused_or_distilled(work / f"gap-{name}-{loss}-{seed}", student_init, teacher_dir, data_dir,
                                                  loss, preset.student_budget, seed, preset.t_start,
                                                  progress=False) / "student"
                        for loss in GAP_LOSSES}
            scores = evaluate_models(work / f"gap-eval-{name}-{seed}", students, data_dir, preset, progress=False)
            for row in scores["rows"]:
                rows.append({"teacher": name, "teacher_params": teacher_score["params"], "teacher_vqa": teacher_score["vqa_accuracy"],
                             "loss": row["model"], "seed": seed, "vqa": row["vqa_accuracy"], "vqa_n": row["vqa_n"],
                             "cider": row["CIDEr"], "caption_backend": row["caption_backend"]})
            print(f"  gap: teacher {name} ({teacher_score['vqa_accuracy']:.1f}) seed {seed}: "
                  + ", ".join(f"{r['model']} {r['vqa_accuracy']:.1f}" for r in scores["rows"]), flush=True)
    return {"rows": rows, "seeds": list(args.gap_seeds)}


def zoo_markdown(result: dict, header: str) -> str:
    # Results written before the backend was recorded per part: the teacher row, scored by the same preset, names it.
    backends = ", ".join(result.get("caption_backends") or [result["teacher"]["caption_backend"]])
    lines = [header, "", f"Teacher VQA accuracy {result['teacher']['vqa_accuracy']:.2f} on {result['teacher']['vqa_n']:,} "
             f"questions; seeds {result['seeds']}; captions scored by {backends}.", "",
             f"| loss | VQA accuracy (mean +- std) | CIDEr-D, {backends} (mean +- std) | gap closed |", "|---|---:|---:|---:|"]
    for r in sorted(result["rows"], key=lambda r: -r["vqa_mean"]):
        gap = "" if r["gap_closed"] is None else f"{r['gap_closed'] * 100:.0f}%"
        lines.append(f"| {r['loss']} | {r['vqa_mean']:.2f} +- {r['vqa_std']:.2f} | {r['cider_mean']:.2f} +- {r['cider_std']:.2f} | {gap} |")
    return "\n".join(lines) + "\n"


def gap_markdown(result: dict, header: str) -> str:
    teachers = sorted({(r["teacher_params"], r["teacher"], r["teacher_vqa"]) for r in result["rows"]})
    lines = [header, "", "Student VQA accuracy (mean over seeds) against the teacher it was distilled from.", "",
             "| loss | " + " | ".join(f"teacher {n} ({p / 1e6:.1f} M, {acc:.1f})" for p, n, acc in teachers) + " |",
             "|---|" + "---:|" * len(teachers)]
    for loss in GAP_LOSSES:
        cells = []
        for _, name, _ in teachers:
            values = [r["vqa"] for r in result["rows"] if r["loss"] == loss and r["teacher"] == name]
            m, s = mean_std(values)
            cells.append(f"{m:.2f} +- {s:.2f}")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_zoo(result: dict, path: Path, title: str) -> None:
    report.plot_zoo(result, path, f"{title}, {len(result['seeds'])} seed(s), mean +- std")


def plot_gap(result: dict, path: Path) -> None:
    plt = pyplot()

    teachers = sorted({(r["teacher_params"], r["teacher"]) for r in result["rows"]})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for loss in GAP_LOSSES:
        means, sds = [], []
        for _, name in teachers:
            m, s = mean_std([r["vqa"] for r in result["rows"] if r["loss"] == loss and r["teacher"] == name])
            means.append(m)
            sds.append(s)
        ax.errorbar([p / 1e6 for p, _ in teachers], means, yerr=sds, marker="o", capsize=3, label=loss)
    ax.set_xlabel("teacher parameters (M)")
    ax.set_ylabel("student VQA accuracy (x100)")
    ax.set_title("Capacity gap: one student size, growing teachers")
    save_figure(plt, fig, ax, path)


def render_existing(out: Path, parts: list[str]) -> None:
    """Tables and plots from committed JSON, with the header naming the command that produced it."""
    for part in parts:
        path = out / f"{part}.json"
        if not path.is_file():
            sys.exit(f"bench_quality: --render-only needs {path}; run the benchmark for part {part!r} first")
        result = json.loads(path.read_text())
        header = f"Command: `{result['command']}`"
        if part == "gap":
            write_table(out / "gap.md", gap_markdown(result, header))
            plot_gap(result, out / "gap.png")
        else:
            write_table(out / f"{part}.md", zoo_markdown(result, header))
            plot_zoo(result, out / f"{part}.png", "Loss zoo" if part == "zoo" else "TAID settings")
        print(f"rewrote {out / part}.md and .png from {path}")


def main(args) -> None:
    """The same-data regime's parts, in order (``taid_vlm.bench.quality`` parsed the arguments)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers import AutoTokenizer

    from ...demo import PRESETS
    from ...demo.pipeline import evaluate_models, initial_models, prepare_data, train_teacher

    # The same-data regime's default is the demo as it was before it adopted the transfer set
    # (preset same-data: students on all 4,000 scenes, 150 steps of 32), which the committed
    # same-data tables measured under the name default.
    preset = PRESETS["same-data" if args.preset == "default" else args.preset]
    preset = preset.with_overrides(caption_backend=args.caption_backend)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    run = Run()
    data_dir = prepare_data(work / "data", preset, False, 0)
    init = initial_models(work / "init", data_dir, preset, False, 0)
    tokenizer = AutoTokenizer.from_pretrained(init["teacher"])
    header = f"Command: `{run.command}` (preset `{preset.name}`: {preset.student_budget.steps} student steps, batch {preset.student_budget.batch_size}, lr {preset.student_budget.lr}; at most {preset.eval_questions or 'all'} test questions)"

    if "zoo" in args.parts or "taid" in args.parts:
        teacher_dir, _ = train_teacher(work / "teacher", init["teacher"], data_dir, preset.teacher_budget, 0, progress=False)
        teacher_row = evaluate_models(work / "eval-teacher", {"teacher": teacher_dir}, data_dir, preset, False)["rows"][0]
        print(f"teacher: VQA {teacher_row['vqa_accuracy']:.2f}", flush=True)
        cache_dir = teacher_cache(work, teacher_dir, data_dir, args.cache_top_k) if args.cache_top_k > 0 else None
    for part, names in (("zoo", list(args.losses)), ("taid", ["sft", "taid", "taid_linear", *TAID_VARIANTS])):
        if part not in args.parts:
            continue
        result = run_zoo(part, names, args.seeds, preset, work, data_dir, tokenizer, teacher_dir, teacher_row, cache_dir)
        write_result(out / f"{part}.json", run.record({**result, "command": run.command,
                                                       "teacher_cache_top_k": args.cache_top_k}, seconds=True))
        write_table(out / f"{part}.md", zoo_markdown(result, header))
        plot_zoo(result, out / f"{part}.png", "Loss zoo" if part == "zoo" else "TAID settings")
        print(zoo_markdown(result, header))
    if "gap" in args.parts:
        gap = run_gap(args, preset, work, data_dir, tokenizer)
        write_result(out / "gap.json", run.record(gap, seconds=True))
        write_table(out / "gap.md", gap_markdown(gap, header))
        plot_gap(gap, out / "gap.png")
        print(gap_markdown(gap, header))
    print_json({"seconds": round(run.seconds, 1), "out": str(out)})
