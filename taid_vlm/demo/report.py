"""The demo's report: one Markdown page a person can trust at a glance, plus three plots."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..train.metrics import read_metrics  # noqa: E402

PLOTS = {"accuracy": "accuracy.png", "loss": "loss_curves.png", "t": "taid_t.png"}


def write_report(result: Any, preset: Any) -> Path:
    out = Path(result.output)
    _plot_accuracy(result, out / PLOTS["accuracy"])
    _plot_losses(result, out / PLOTS["loss"])
    has_taid = "taid" in result.extra["students"]
    if has_taid:
        _plot_t(result, out / PLOTS["t"])
    (out / "results.json").write_text(json.dumps({
        "preset": result.preset, "text": result.text, "seed": result.seed, "rows": result.rows,
        "by_family": result.by_family, "phase_seconds": result.phase_seconds, "majority": result.extra["majority"],
        "teacher_reused": result.teacher_reused, "gap_closed": gap_closed(result.rows),
    }, indent=1))  # fmt: skip
    result.report.write_text(_markdown(result, preset, has_taid))
    return result.report


def gap_closed(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Share of the sft-student -> teacher accuracy gap each distilled student closes."""
    by_name = {r["model"]: r["vqa_accuracy"] for r in rows}
    teacher, sft = by_name.get("teacher"), by_name.get("sft student")
    if teacher is None or sft is None or teacher <= sft:
        return {}
    return {name: round((acc - sft) / (teacher - sft), 3) for name, acc in by_name.items() if name not in ("teacher", "sft student")}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown(result: Any, preset: Any, has_taid: bool) -> str:
    rows = result.rows
    teacher = next((r for r in rows if r["model"] == "teacher"), None)
    sft = next((r for r in rows if r["model"] == "sft student"), None)
    lines = [f"# taid-vlm demo report ({'text' if result.text else 'vision-language'}, preset `{result.preset}`)", ""]
    if teacher and sft:
        margin = teacher["vqa_accuracy"] - sft["vqa_accuracy"]
        verdict = "clearly beats" if margin >= 10 else "beats" if margin > 0 else "does NOT beat"
        lines += [f"The teacher {verdict} the student trained without it: {teacher['vqa_accuracy']:.2f} vs "
                  f"{sft['vqa_accuracy']:.2f} VQA accuracy ({margin:+.2f} points).", ""]
    majority = result.extra["majority"]["overall"] * 100
    lines += [
        f"VQA accuracy on {rows[0]['vqa_n']} questions (x100; always answering each family's most common answer "
        f"scores {majority:.1f}). Captions on {rows[0]['caption_n']} images (x100, {rows[0]['caption_backend']}).", "",
        "| model | parameters | VQA accuracy | CIDEr | BLEU-4 | empty answers | gap closed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    closed = gap_closed(rows)
    for r in rows:
        share = closed.get(r["model"])
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {_fmt(r['vqa_accuracy'])} | {_fmt(r['CIDEr'])} | "
                     f"{_fmt(r['BLEU-4'])} | {r['vqa_empty']} | {'' if share is None else f'{share * 100:.0f}%'} |")
    lines += ["", "\"gap closed\" = (student - sft student) / (teacher - sft student) in VQA accuracy.", "",
              f"![VQA accuracy per model]({PLOTS['accuracy']})", "", "## Accuracy per question family", ""]
    families = sorted(next(iter(result.by_family.values())))
    lines += ["| model | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    lines.append("| majority answer | " + " | ".join(_fmt(result.extra["majority"]["by_family"].get(f, 0) * 100, 1) for f in families) + " |")
    for name, fam in result.by_family.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(fam.get(f), 1) for f in families) + " |")
    lines += ["", "## Training", "", f"![training loss]({PLOTS['loss']})", ""]
    if has_taid:
        lines += [f"![TAID t against the linear schedule]({PLOTS['t']})", "",
                  "With a few hundred steps, alpha * N / 2 < 1: the adaptive rule cannot outrun the linear floor, "
                  "so t follows t_linear (docs/TAID.md, weakness 4).", ""]
    tb, sb = preset.teacher_budget, preset.student_budget
    lines += [
        "## Settings", "",
        f"- data: {preset.n_train} training scenes x {preset.qa_turns} questions + 1 caption, {preset.n_test} test scenes, "
        f"{preset.image_size} px, BPE vocabulary {preset.vocab_size}, seed {result.seed}",
        f"- teacher: trained from scratch with cross entropy, {tb.steps} steps, batch {tb.batch_size}, lr {tb.lr}, "
        f"warmup {tb.warmup_steps}{' (reused from an earlier run)' if result.teacher_reused else ''}",
        f"- students: identical initial weights, data order and budget: {sb.steps} steps, batch {sb.batch_size}, "
        f"lr {sb.lr}, warmup {sb.warmup_steps}, AdamW (weight decay 0.01), cosine; TAID t_start {preset.t_start}",
        "- evaluation: greedy decoding, official VQA normalisation, pycocoevalcap captions (see eval/*/results.json)",
        f"- machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}", "",
        "## Run time", "", "| phase | seconds |", "|---|---:|",
    ]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in result.phase_seconds.items()]
    lines += [f"| **total** | **{sum(result.phase_seconds.values()):.0f}** |", "", "## Reproduce", "", "```",
              f"taid-vlm demo --preset {result.preset}{' --text' if result.text else ''} --seed {result.seed} --out {result.output}",
              "```", ""]
    return "\n".join(lines)


def _plot_accuracy(result: Any, path: Path) -> None:
    names = [r["model"] for r in result.rows]
    values = [r["vqa_accuracy"] for r in result.rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    colors = ["#555555" if n == "teacher" else "#1f77b4" if "taid" in n else "#9ecae1" for n in names]
    bars = ax.bar(names, values, color=colors)
    ax.bar_label(bars, fmt="%.1f")
    ax.axhline(result.extra["majority"]["overall"] * 100, color="red", linestyle="--", linewidth=1, label="majority answer")
    ax.set_ylabel("VQA accuracy (x100)")
    ax.set_title("Teacher and students on the shapes test set")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_losses(result: Any, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for loss, run_dir in result.extra["students"].items():
        rows = read_metrics(Path(run_dir) / "metrics.jsonl")
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"{loss} student")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (own objective)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_t(result: Any, path: Path) -> None:
    rows = read_metrics(Path(result.extra["students"]["taid"]) / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["step"] for r in rows], [r["t"] for r in rows], label="t (adaptive)")
    ax.plot([r["step"] for r in rows], [r["t_linear"] for r in rows], linestyle="--", label="t_linear")
    ax.set_xlabel("step")
    ax.set_ylabel("interpolation t")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
