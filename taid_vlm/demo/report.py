"""The demo's report: one Markdown page a person can trust at a glance, plus three plots.

Every sentence is derived from what the run produced: the caption backend the evaluation
actually used, the question counts it actually scored, and the t vs t_linear statement read
from the TAID student's metrics.jsonl. ``results.json`` adds the machine and the command, so
the demo table of docs/results/README.md can be regenerated from a committed copy (scripts/readme_tables.py).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..files import write_text_atomically  # noqa: E402
from ..train.metrics import read_metrics  # noqa: E402

PLOTS = {"accuracy": "accuracy.png", "loss": "loss_curves.png", "t": "taid_t.png"}


def write_report(result: Any, preset: Any) -> Path:
    out = Path(result.output)
    _plot_accuracy(result, out / PLOTS["accuracy"])
    _plot_losses(result, out / PLOTS["loss"])
    has_taid = "taid" in result.extra["students"]
    if has_taid:
        _plot_t(result, out / PLOTS["t"])
    schedule = t_schedule_summary(Path(result.extra["students"]["taid"]) / "metrics.jsonl") if has_taid else None
    write_text_atomically(out / "results.json", json.dumps({
        "preset": result.preset, "text": result.text, "seed": result.seed, "rows": result.rows,
        "training_scenes": {"teacher": preset.n_train, "students": preset.transfer_records or preset.n_train},
        "by_family": result.by_family, "phase_seconds": result.phase_seconds,
        "total_seconds": round(sum(result.phase_seconds.values()), 1), "majority": result.extra["majority"],
        "teacher_reused": result.teacher_reused, "gap_closed": gap_closed(result.rows),
        "caption_backends": sorted({str(r.get("caption_backend")) for r in result.rows}),
        "vqa_rules": sorted({str(r.get("vqa_rules")) for r in result.rows}),
        "taid_schedule": schedule, "command": reproduce_command(result), "invoked_as": shlex.join(sys.argv),
        "machine": machine_description(), "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, indent=1))  # fmt: skip
    write_text_atomically(result.report, _markdown(result, preset, schedule))
    return result.report


def student_data_line(preset) -> str:
    """Which scenes the students learn from: the transfer set is why the teacher has more to give."""
    if preset.transfer_records:
        return (f"a transfer set of the first {preset.transfer_records} of the teacher's {preset.n_train} training scenes "
                "(the teacher knows more than the students see)")
    return f"the teacher's {preset.n_train} training scenes"


def reproduce_command(result: Any) -> str:
    return (f"taid-vlm demo --preset {result.preset}{' --text' if result.text else ''} --seed {result.seed} "
            f"--output {result.output}")


def machine_description() -> dict[str, Any]:
    """What a reader needs to compare run times: CPU, cores, memory, load, library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_gib": memory_gib,
        "gpu": torch.cuda.is_available(),
        "load_average_1_5_15_min": [round(x, 2) for x in load] if load else None,
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
    }  # fmt: skip


def t_schedule_summary(metrics_path: Path) -> dict[str, Any] | None:
    """How far TAID's adaptive t moved from the linear schedule, read from the logged steps."""
    rows = [r for r in read_metrics(metrics_path) if isinstance(r.get("t"), (int, float))
            and isinstance(r.get("t_linear"), (int, float))]
    if not rows:
        return None
    gaps = [r["t"] - r["t_linear"] for r in rows]
    worst = max(range(len(rows)), key=lambda k: abs(gaps[k]))
    return {"logged_steps": len(rows), "max_abs_t_minus_t_linear": abs(gaps[worst]), "at_step": rows[worst]["step"],
            "final_step": rows[-1]["step"], "final_t": rows[-1]["t"], "final_t_linear": rows[-1]["t_linear"]}


def t_schedule_sentence(schedule: dict[str, Any]) -> str:
    gap = schedule["max_abs_t_minus_t_linear"]
    if gap < 1e-6:
        return (f"Over the {schedule['logged_steps']} logged steps t equalled t_linear (largest difference "
                f"{gap:.1e}): the adaptive rule never lifted t above the linear floor in this run "
                "(docs/TAID.md says when it can).")
    return (f"t departed from t_linear by up to {gap:.4f} (step {schedule['at_step']}); at step "
            f"{schedule['final_step']} t = {schedule['final_t']:.4f} against t_linear = {schedule['final_t_linear']:.4f}.")


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


def _markdown(result: Any, preset: Any, schedule: dict[str, Any] | None) -> str:
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
    backends = ", ".join(sorted({str(r.get("caption_backend")) for r in rows}))
    rules = ", ".join(sorted({str(r.get("vqa_rules")) for r in rows}))
    lines += [
        f"VQA accuracy ({rules} rules) on {_counts(rows, 'vqa_n')} questions (x100; always answering each family's "
        f"most common answer scores {majority:.1f}). Captions on {_counts(rows, 'caption_n')} images (x100, "
        f"scored by {backends}).", "",
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
    if schedule is not None:
        lines += [f"![TAID t against the linear schedule]({PLOTS['t']})", "", t_schedule_sentence(schedule), ""]
    tb, sb = preset.teacher_budget, preset.student_budget
    lines += [
        "## Settings", "",
        f"- data: {preset.n_train} training scenes x {preset.qa_turns} questions + 1 caption, {preset.n_test} test scenes, "
        f"{preset.image_size} px, BPE vocabulary {preset.vocab_size}, seed {result.seed}",
        f"- teacher: trained from scratch with cross entropy, {tb.steps} steps, batch {tb.batch_size}, lr {tb.lr}, "
        f"warmup {tb.warmup_steps}{' (reused from an earlier run)' if result.teacher_reused else ''}",
        f"- students: {student_data_line(preset)}; identical initial weights, data order and budget: {sb.steps} steps, batch {sb.batch_size}, "
        f"lr {sb.lr}, warmup {sb.warmup_steps}, AdamW (weight decay 0.01), cosine; TAID t_start {preset.t_start}",
        f"- evaluation: greedy decoding, VQA rules {rules}, captions scored by {backends} (see eval/*/results.json)",
        f"- machine: {_machine_line()}", "",
        "## Run time", "", "| phase | seconds |", "|---|---:|",
    ]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in result.phase_seconds.items()]
    lines += [f"| **total** | **{sum(result.phase_seconds.values()):.0f}** |", "", "## Reproduce", "", "```",
              reproduce_command(result), "```", ""]
    return "\n".join(lines)


def _counts(rows: list[dict[str, Any]], key: str) -> str:
    """The number every model was scored on, or each model's own when they differ."""
    values = {r[key] for r in rows}
    if len(values) == 1:
        return f"{values.pop():,}"
    return "/".join(f"{r[key]:,}" for r in rows) + " (per model)"


def _machine_line() -> str:
    m = machine_description()
    load = m["load_average_1_5_15_min"]
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gib']} GiB, Python {m['python']}, torch {m['torch']}"
            + (f", load average {load[0]:.2f} at the end" if load else ""))


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
