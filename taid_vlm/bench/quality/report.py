"""Tables and plots of the transfer regime's parts, from their JSON (partial JSON included: a part
that has not finished says so in its first line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results import write_table
from .stats import mean_std, plateau_statements


def status_line(result: dict[str, Any]) -> str:
    if result.get("complete"):
        return "Finished."
    return ("**Partial:** the run had not finished this part when these numbers were written; "
            f"rerun `{result['command']}` to complete it (finished runs are reused).")


def zoo_markdown(result: dict[str, Any], title: str) -> str:
    backends = sorted({b for r in result["rows"] for b in r["caption_backend"]})
    teacher = result["teacher"]
    lines = [f"## {title}", "", status_line(result), "",
             f"Command: `{result['command']}`. Teacher VQA accuracy {teacher['vqa_accuracy']:.2f} on {teacher['vqa_n']:,} "
             f"questions (trained on {result['teacher_data_records']:,} scenes); students see {result['transfer_records']:,} "
             f"scenes for {result.get('student_steps', result['settings']['student_steps'])} steps, batch {result['settings']['student_batch']}; "
             f"majority-answer baseline {result['majority']:.2f}; captions scored by {', '.join(backends) or 'n/a'}.", "",
             "| loss | VQA accuracy (mean +- std) | seeds | CIDEr-D (mean +- std) | taid - loss, paired (mean +- std) | taid ahead |",
             "|---|---:|---:|---:|---:|---:|"]
    pairs = {p["baseline"]: p for p in result["paired"]}
    for r in sorted(result["rows"], key=lambda r: -r["vqa_mean"]):
        p = pairs.get(r["loss"])
        diff = "" if p is None else f"{p['mean_diff']:+.2f} +- {p['std_diff']:.2f}"
        wins = "" if p is None else f"{p['wins']}/{p['n']}"
        lines.append(f"| {r['loss']} | {r['vqa_mean']:.2f} +- {r['vqa_std']:.2f} | {len(r['seeds'])} | "
                     f"{r['cider_mean']:.2f} +- {r['cider_std']:.2f} | {diff} | {wins} |")
    lines += ["", *[f"- {s}" for s in result["statements"]]]
    return "\n".join(lines) + "\n"


def gap_markdown(result: dict[str, Any], title: str) -> str:
    teachers = sorted(result["teachers"], key=lambda t: t["params"])
    lines = [f"## {title}", "", status_line(result), "", f"Command: `{result['command']}`.", "",
             "| student loss | " + " | ".join(f"teacher {t['name']} ({t['params'] / 1e6:.2f} M, {t['steps']} steps, VQA {t['vqa']:.1f})"
                                             for t in teachers) + " |",
             "|---|" + "---:|" * len(teachers)]
    for loss in sorted({p["loss"] for p in result["rows"]}):
        cells = []
        for t in teachers:
            values = [p["vqa"] for p in result["rows"] if p["loss"] == loss and p["teacher"] == t["name"]]
            cells.append("" if not values else f"{mean_std(values)[0]:.2f} +- {mean_std(values)[1]:.2f} ({len(values)})")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    budget = f" after {result['student_steps']} student steps" if result.get("student_steps") else ""
    lines += ["", f"Student VQA accuracy{budget}, mean +- std (seeds).", "", *[f"- {s}" for s in result["statements"]]]
    return "\n".join(lines) + "\n"


def xtok_markdown(result: dict[str, Any], title: str) -> str:
    """Cross-tokenizer methods against sft: one student on its own tokenizer, the teacher on another."""
    backends = sorted({b for r in result["rows"] for b in r["caption_backend"]})
    teacher, methods = result["teacher"], result["methods"]
    lines = [f"## {title}", "", status_line(result), "",
             f"Command: `{result['command']}`. Teacher VQA accuracy {teacher['vqa_accuracy']:.2f} on {teacher['vqa_n']:,} "
             f"questions, its tokenizer {result['teacher_vocabulary']} entries with ChatML turns; the student's own "
             f"tokenizer {result['student_vocabulary']} entries (a BPE on the same texts) with Llama 3 turns. Students "
             f"see {result['transfer_records']:,} scenes for {result['student_steps']} steps, batch "
             f"{result['settings']['student_batch']}, the teacher through its top-{result['teacher_cache_top_k']} cache; "
             f"majority-answer baseline {result['majority']:.2f}; captions scored by {', '.join(backends) or 'n/a'}.", "",
             "| method | loss, settings | VQA accuracy (mean +- std) | seeds | CIDEr-D (mean +- std) | method - sft, paired "
             "| ahead of sft | aligned tokens | teacher mass on shared entries |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    pairs = {p["method"]: p for p in result["paired"]}
    for r in sorted(result["rows"], key=lambda r: -r["vqa_mean"]):
        p, name = pairs.get(r["loss"]), r["loss"]
        settings = ", ".join(f"{k} {v}" for k, v in methods.get(name, {}).items())
        diff = "" if p is None else f"{p['mean_diff']:+.2f} +- {p['std_diff']:.2f}"
        wins = "" if p is None else f"{p['wins']}/{p['n']}"
        logged = result.get("alignment", {}).get(name, {})
        cells = []
        for key in ("aligned_fraction", "mapped_mass"):
            values = [v for k, v in logged.items() if k.startswith(key + "/")]
            cells.append(f"{100 * sum(values) / len(values):.1f}%" if values else "")
        lines.append(f"| {name} | {settings} | {r['vqa_mean']:.2f} +- {r['vqa_std']:.2f} | {len(r['seeds'])} | "
                     f"{r['cider_mean']:.2f} +- {r['cider_std']:.2f} | {diff} | {wins} | {cells[0]} | {cells[1]} |")
    lines += ["", "Aligned tokens: the share of the student's response tokens with a teacher token starting at the same "
              "character (the others meet only the cross entropy), averaged over steps and seeds; teacher mass on shared "
              "entries: the share of the aligned teacher's top-k mass that the student's vocabulary holds (span only).", "",
              *[f"- {s}" for s in result["statements"]]]
    return "\n".join(lines) + "\n"


def sizing_markdown(result: dict[str, Any], title: str) -> str:
    lines = [f"## {title}", "", status_line(result), "", f"Command: `{result['command']}` (seed 0).", "",
             "| student steps | loss | VQA accuracy | CIDEr-D |", "|---:|---|---:|---:|"]
    for p in result["points"]:
        lines.append(f"| {p['steps']} | {p['loss']} | {p['vqa']:.2f} | {p['cider']:.2f} |")
    lines += ["", *[f"- {s}" for s in plateau_statements(result["points"])]]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, ax, path: Path) -> None:
    """Legend, tight layout, a 120 dpi PNG at ``path``, figure closed."""
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_zoo(result: dict[str, Any], path: Path, title: str) -> None:
    """VQA accuracy per loss, mean +- std over seeds, with the teacher (and the majority answer, when known)."""
    plt = pyplot()
    rows = sorted(result["rows"], key=lambda r: -r["vqa_mean"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    colors = ["#1f77b4" if r["loss"].startswith("taid") else "#9ecae1" for r in rows]
    ax.bar([r["loss"] for r in rows], [r["vqa_mean"] for r in rows], yerr=[r["vqa_std"] for r in rows], color=colors, capsize=3)
    ax.axhline(result["teacher"]["vqa_accuracy"], color="#555555", linestyle="--", label="teacher")
    if result.get("majority") is not None:
        ax.axhline(result["majority"], color="#bbbbbb", linestyle=":", label="majority answer")
    ax.set_ylabel("VQA accuracy (x100)")
    ax.set_title(title + ("" if result.get("complete", True) else " (partial)"))
    ax.tick_params(axis="x", rotation=35)
    save_figure(plt, fig, ax, path)


def plot_gap(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    teachers = sorted(result["teachers"], key=lambda t: t["params"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for loss, curve in result["curves"].items():
        xs = [t["vqa"] for t in teachers][: len(curve)]
        ax.errorbar(xs, [c[0] for c in curve], yerr=[c[1] for c in curve], marker="o", capsize=3, label=loss)
    ax.set_xlabel("teacher VQA accuracy (x100)")
    ax.set_ylabel("student VQA accuracy (x100)")
    ax.set_title("Capacity gap, transfer regime" + ("" if result.get("complete") else " (partial)"))
    save_figure(plt, fig, ax, path)


def plot_sizing(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for loss in sorted({p["loss"] for p in result["points"]}):
        pts = sorted((p["steps"], p["vqa"]) for p in result["points"] if p["loss"] == loss)
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=loss)
    ax.set_xlabel("student steps on the transfer set")
    ax.set_ylabel("VQA accuracy (x100)")
    ax.set_title("Sizing the student budget (seed 0)")
    save_figure(plt, fig, ax, path)


TITLES = {"zoo": "Transfer regime: loss zoo", "plateau": "Transfer regime: loss zoo at the plateau budget",
          "noanswer": "Transfer regime, no answers: the teacher answers the transfer set",
          "gap": "Transfer regime: capacity gap", "sizing": "Transfer regime: student budget sizing",
          "xtok": "Transfer regime: cross-tokenizer distillation (the student on its own tokenizer)"}


def render(part: str, result: dict[str, Any], out: Path) -> None:
    """Write ``out/part.md`` and ``out/part.png`` from the part's result."""
    if part in ("zoo", "plateau", "noanswer"):
        text = zoo_markdown(result, TITLES[part])
        plot_zoo(result, out / f"{part}.png", TITLES[part])
    elif part == "xtok":
        text = xtok_markdown(result, TITLES[part])
        plot_zoo(result, out / "xtok.png", "Cross-tokenizer students")
    elif part == "gap":
        text = gap_markdown(result, TITLES[part])
        plot_gap(result, out / "gap.png")
    else:
        text = sizing_markdown(result, TITLES[part])
        plot_sizing(result, out / "sizing.png")
    write_table(out / f"{part}.md", text)
