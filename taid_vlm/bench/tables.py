"""Regenerate the generated result blocks of README.md and docs/results/README.md from the
committed JSON in docs/results/.

Every figure in those documents' results sits between a pair of markers

    <!-- generated: NAME (scripts/readme_tables.py) -->
    ...
    <!-- end generated: NAME -->

and is rendered here from its JSON, so a table cannot drift from the result behind it:
``python scripts/readme_tables.py`` rewrites the blocks of both documents, ``--check`` exits 1
when one differs from what the JSON says (tests/test_readme_tables.py runs the check). Links are
written relative to the document that holds the block.

Blocks: ``summary`` (README.md: a few lines over all the results below, with links), ``generation``
(README.md: docs/results/bench_generation.json), ``demo``
(``demo_default.json`` in docs/results/, a copy of a default demo run), ``loss`` (docs/results/bench_loss.json),
``loss_ce`` (docs/results/bench_loss_ce.json),
``trl`` (docs/results/bench_vs_trl.json and docs/results/bench_vs_trl_v151936.json),
``zoo``, ``gap`` and ``taid`` (docs/results/quality/*.json, the same-data regime), ``transfer-zoo``,
``transfer-plateau``, ``transfer-gap``, ``transfer-noanswer`` and ``transfer-sizing`` (docs/results/quality/transfer/*.json;
a part not run yet renders as the command that runs it), ``lora`` (docs/results/bench_scale_lora.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from .results import write_table
from .quality.stats import plateau_statements
from .runner import REPO

ROOT = REPO
RESULTS = ROOT / "docs" / "results"
SCRIPT = "scripts/readme_tables.py"
DOCUMENTS = (ROOT / "README.md", RESULTS / "README.md")  # the README's summary; every table
BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) \(" + re.escape(SCRIPT) + r"\) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
    re.S,
)


def load(relative: str) -> dict[str, Any]:
    path = RESULTS / relative
    if not path.is_file():
        raise FileNotFoundError(f"readme_tables: {path.relative_to(ROOT)} is missing; run the script that writes it")
    return json.loads(path.read_text(encoding="utf-8"))


def _load_text(machine: dict[str, Any]) -> str:
    """The load average the JSON recorded (the machines are shared: timings depend on it)."""
    for key in ("load_average_1_5_15_min", "load_average_1_5_15min_at_start"):
        if machine.get(key):
            return f"load average {machine[key][0]:.1f} (1 min)"
    return "load not recorded"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x"


# ---- the demo ---------------------------------------------------------------------------------


def demo_block() -> str:
    name = "demo_default.json"
    d = load(name)
    rows, closed = d["rows"], d.get("gap_closed", {})
    backends, rules = ", ".join(d["caption_backends"]), ", ".join(d["vqa_rules"])
    lines = [f"| model | parameters | VQA accuracy | CIDEr ({backends}) | BLEU-4 ({backends}) | gap closed |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = closed.get(r["model"])
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['vqa_accuracy']:.2f} | {r['CIDEr']:.1f} | "
                     f"{r['BLEU-4']:.1f} | {'' if share is None else f'{share * 100:.0f}%'} |")
    n_questions = sorted({r["vqa_n"] for r in rows})
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in d["phase_seconds"].items())
    m = d["machine"]
    scenes = d.get("training_scenes")
    lines += [
        "",
        *([f"The teacher trained on {scenes['teacher']:,} scenes; the students distilled on the first {scenes['students']:,} of them."]
          if scenes and scenes["students"] < scenes["teacher"] else []),
        f"{'/'.join(f'{n:,}' for n in n_questions)} test questions scored ({rules} VQA rules); always answering each "
        f"question family's most common answer scores {d['majority']['overall'] * 100:.1f}. Captions on "
        f"{rows[0]['caption_n']} images, scored by {backends}.",
        f"The run took {d['total_seconds']:.0f} s ({phases}) on {m['cpu']}, {m['cores']} cores, "
        f"{m.get('torch_threads', '?')} torch thread(s), {_load_text(m)} at the end"
        + (", with the teacher reused from an earlier run" if d["teacher_reused"] else "") + ".",
        f"Command: `{d['command']}`; [{name}](docs/results/{name}).",
    ]
    schedule = d.get("taid_schedule")
    if schedule:
        gap = schedule["max_abs_t_minus_t_linear"]
        lines.append(
            f"TAID's t over {schedule['logged_steps']} logged steps: "
            + ("equal to t_linear at every one (the adaptive rule never acted)." if gap < 1e-6
               else f"up to {gap:.4f} above t_linear.")
        )
    return "\n".join(lines)


# ---- the loss engine --------------------------------------------------------------------------


LOSS_RUNS = (  # (JSON in docs/results/, what the run varied); rows of one file share its process and floor
    ("bench_loss.json", "CPU default budget"),
    ("bench_loss_chunk1024.json", "`chunk_size: 1024`"),
    ("bench_loss_chunk96_light_load.json", "`chunk_size: 96`"),
)
PROFILE_STEPS = {"student_logits": "student logits", "teacher_logits": "teacher logits",
                 "grad_hidden_gemm": "gradient w.r.t. the hidden states", "grad_head_gemm": "w.r.t. the head",
                 "loss_and_grad_kernel": "the loss + gradient kernel"}


def _times(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def loss_block() -> str:
    """The engine against the plain path and against the GEMM floor timed in the same process."""
    main = load("bench_loss.json")
    s = main["summary"]
    plain = load(Path(s["naive_source"]).name)["naive"][s["naive_reference"]]
    lines = [
        f"Forward + backward over {s['tokens']:,} response tokens, hidden {s['hidden']:,}, vocabulary {s['vocab']:,}, "
        f"{s['dtype']}, {s['device']}, the teacher given as hidden states + LM head; *ratio* = engine / floor (medians):",
        "",
        "| | chunk | peak memory | plain path / engine | time | ratio to floor | floor | load (1 min, end) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| plain full logits | - | {plain['peak_mb']:,.0f} MB | 1x | {plain['seconds']:.1f} s | - | - | "
        f"{load(Path(s['naive_source']).name)['machine']['load_average_1_5_15min_at_end'][0]:.1f} |",
    ]
    swings = []
    for name, what in LOSS_RUNS:
        for r in load(name)["rows"]:
            lines.append(f"| engine, {r['loss']}, {what} | {r['chunk_size']:,} | {r['peak_mb']:,.0f} MB | "
                         f"{plain['peak_mb'] / r['peak_mb']:.1f}x | {r['seconds']:.1f} s | {r['ratio']:.2f} | "
                         f"{r['floor_s']:.1f} s | {r['load_average_1min_at_end']:.1f} |")
            if max(r["all_floor_s"]) > 1.5 * min(r["all_floor_s"]):
                swings.append(f"{r['loss']} at chunk {r['chunk_size']} (passes {_times(r['all_seconds'])} s, floors "
                              f"{_times(r['all_floor_s'])} s; [{name}](docs/results/{name}))")
    taid = next(r for r in main["rows"] if r["loss"] == "taid")
    profile = taid["one_chunk_profile_s"]
    lines += [
        "",
        f"Plain path: [{Path(s['naive_source']).name}]({s['naive_source']}); engine rows: "
        + ", ".join(f"[{name}](docs/results/{name})" for name, _ in LOSS_RUNS) + ".",
        f"One {taid['chunk_size']}-token chunk of taid, each step timed alone: "
        + ", ".join(f"{label} {profile[key]:.2f} s" for key, label in PROFILE_STEPS.items()) + ".",
    ]
    if swings:
        lines.append("The load swung within these runs (a floor moved by more than half): " + "; ".join(swings) + ".")
    return "\n".join(lines)


def loss_ce_block() -> str:
    """KD + CE in one pass of the engine against two passes mixed (``bench_loss.py --ce-weight``)."""
    d = load("bench_loss_ce.json")
    s, timing = d["summary"], d["timing"]
    return "\n".join([
        f"`(1 - W) * KD + W * CE` with W = {s['ce_weight']} (`distil_ratio: {1 - s['ce_weight']:g}`), {s['loss']}, "
        f"{s['tokens']:,} tokens, hidden {s['hidden']:,}, vocabulary {s['vocab']:,}, {s['dtype']}, {s['device']}; "
        f"peaks each in its own process, times alternated in one (medians of {len(timing['all_fused_s'])}):",
        "",
        "| | peak memory | time | load (1 min, end) |",
        "|---|---:|---:|---:|",
        f"| one pass (`ce_weight`) | {s['fused_peak_mb']:,.0f} MB | {s['fused_s']:.1f} s | {timing['load_average_1min_at_end']:.1f} |",
        f"| two passes, mixed | {s['two_peak_mb']:,.0f} MB | {s['two_s']:.1f} s | {timing['load_average_1min_at_end']:.1f} |",
        f"| two / one | {s['two_over_fused_peak']:.2f}x | {s['two_over_fused_time']:.2f}x | |",
        "",
        f"One fp32 head gradient here is {s['head_gradient_mb']:,.0f} MB; command `{d['command']}`, {_load_text(d['machine'])} "
        f"at the start ([bench_loss_ce.json](docs/results/bench_loss_ce.json)).",
    ])


# ---- the teacher cache ------------------------------------------------------------------------


def cache_block() -> str:
    """Live teacher against a top-k cache on the demo pair (CPU seconds of one-thread processes)."""
    d = load("bench_cache.json")
    load_1min = [m["load_average_1_5_15min_at_start"][0] for m in [d["machine"]] if m.get("load_average_1_5_15min_at_start")]
    return "\n".join([
        f"A top-{d['top_k']} {d['logit_dtype']} cache of {d['cache_records']:,} training records "
        f"({d['cache_tokens']:,} response tokens), then {d['steps_per_run']} TAID steps (batch {d['batch_size']}) from the "
        f"live teacher and from the cache, {d['repeats']} runs each, alternating, each in its own one-thread process:",
        "",
        "| | step (CPU s, median) | step (wall s, median) | peak memory |",
        "|---|---:|---:|---:|",
        f"| live teacher | {d['live_step_s']:.2f} | {d['live_step_wall_s']:.1f} | {d['live_peak_mb']:,.0f} MB |",
        f"| top-{d['top_k']} cache | {d['cached_step_s']:.2f} | {d['cached_step_wall_s']:.1f} | {d['cached_peak_mb']:,.0f} MB |",
        "",
        f"{d['step_speedup']:.2f}x less work per student step; {d['bytes_per_token']:.0f} bytes per response token "
        f"(DistillKit's published figure: ~300); the cache was built in {d['build_s']:.0f} s ({d['build_cpu_s']:.0f} CPU s)"
        + (f"; load average {load_1min[0]:.1f} (1 min) at the start" if load_1min else "")
        + " ([bench_cache.json](docs/results/bench_cache.json)).",
        *_cache_quality_lines(),
    ])


def _cache_quality_lines() -> list[str]:
    """Live teacher against the top-k cache on student quality (TAID students over seeds)."""
    q = load("cache_quality.json")
    s = q["summary"]
    per_seed = {v: ", ".join(f"{r['vqa']:.2f}" for r in q["rows"] if r["variant"] == v) for v in ("live", "cached")}
    verdict = "within" if q["within_seed_spread"] else "outside"
    return [
        "",
        f"TAID students of the same-data demo preset (the default when measured; teacher {q['teacher_vqa']:.2f}), seeds {', '.join(map(str, q['seeds']))}: "
        f"live teacher {s['live']['vqa_mean']:.2f} +- {s['live']['vqa_std']:.2f} VQA accuracy ({per_seed['live']}), "
        f"top-{q['top_k']} cache {s['cached']['vqa_mean']:.2f} +- {s['cached']['vqa_std']:.2f} ({per_seed['cached']}): "
        f"{q['cached_minus_live_vqa']:+.2f} points, {verdict} the live student's seed spread "
        f"([cache_quality.json](docs/results/cache_quality.json)).",
    ]


# ---- against TRL ------------------------------------------------------------------------------

SIDE_NAMES = {
    "ours_chunked_fkl": "taid-vlm, chunked fused-linear `fkl`",
    "trl_distillation_chunked": "TRL `DistillationTrainer` (chunked divergence)",
    "trl_gkd_full_logits": "TRL `GKDTrainer` (full logits)",
    "trl_gkd_liger": "TRL `GKDTrainer`, `use_liger_kernel=True`",
}
LEGACY_SIDES = {"ours": "ours_chunked_fkl", "trl": "trl_gkd_full_logits"}  # files written before the sides had names


def trl_block() -> str:
    lines = ["| vocabulary, batch | side | step | peak memory | loss difference to ours | load (1 min) |",
             "|---|---|---:|---:|---:|---:|"]
    notes = []
    for name in ("bench_vs_trl.json", "bench_vs_trl_v151936.json"):
        d = load(name)
        sides = {LEGACY_SIDES.get(k, k): v for k, v in d["sides"].items()}
        ours = sides["ours_chunked_fkl"]
        shape = f"{d['vocab']:,}, {d['batch_size']} x {d['seq_len']}"
        for key in sorted(sides, key=lambda k: (k != "ours_chunked_fkl", k)):
            side = sides[key]
            label = SIDE_NAMES.get(key, key)
            if side.get("ran", True) is False:
                lines.append(f"| {shape} | {label} | could not run | | | |")
                notes.append(f"{label} at vocabulary {d['vocab']:,}: `{side['error']}`")
                continue
            diff = "" if key == "ours_chunked_fkl" else f"{abs(side['loss'] - ours['loss']):.1e}"
            side_load = side.get("load_average_1_5_15min")
            side_load = "" if side_load is None else f"{side_load['start'][0]:.1f}"
            lines.append(f"| {shape} | {label} | {side['step_s']:.2f} s | {side['peak_mb']:,.0f} MB | {diff} | {side_load} |")
        ran = {k: v for k, v in sides.items() if k != "ours_chunked_fkl" and v.get("ran", True) is not False}
        leanest = min(ran, key=lambda k: ran[k]["peak_mb"])
        strongest = d.get("strongest_trl_side", "trl_gkd_full_logits")
        notes.append(
            f"vocabulary {d['vocab']:,}: against the strongest TRL side that ran ({SIDE_NAMES.get(strongest, strongest)}), "
            f"ours is {_speed(d['trl_step_s'], d['ours_step_s'])} and uses {_ratio(d['trl_peak_mb'], d['ours_peak_mb'])} "
            f"less memory (against TRL's leanest side, {SIDE_NAMES.get(leanest, leanest)}: "
            f"{_ratio(ran[leanest]['peak_mb'], ours['peak_mb'])}); {_load_text(d['machine'])} at the start, "
            f"TRL {d['machine'].get('trl', '?')} ([{name}](docs/results/{name}))"
        )
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def _speed(theirs: float, ours: float) -> str:
    return f"{theirs / ours:.1f}x as fast" if ours <= theirs else f"{ours / theirs:.1f}x slower"


# ---- quality ----------------------------------------------------------------------------------

LOSS_LABELS = {
    "taid": "**taid**", "taid_linear": "taid, linear schedule only", "sft": "sft (no teacher)",
    "taid_t0.2": "taid, t_start 0.2", "taid_t0.7": "taid, t_start 0.7",
    "taid_alpha_per_run4": "taid, alpha = 4 / steps (adaptive rule active)",
}


def _zoo_like(part: str) -> str:
    d = load(f"quality/{part}.json")
    teacher = d["teacher"]
    backend = ", ".join(d.get("caption_backends") or [teacher["caption_backend"]])
    lines = [f"| loss | VQA accuracy | CIDEr-D ({backend}) | sft -> teacher gap closed |", "|---|---:|---:|---:|"]
    for r in sorted(d["rows"], key=lambda r: -r["vqa_mean"]):
        gap = "" if r["gap_closed"] is None else f"{r['gap_closed'] * 100:.0f}%"
        lines.append(f"| {LOSS_LABELS.get(r['loss'], r['loss'])} | {r['vqa_mean']:.2f} +- {r['vqa_std']:.2f} | "
                     f"{r['cider_mean']:.1f} +- {r['cider_std']:.1f} | {gap} |")
    lines += ["", f"Teacher {teacher['vqa_accuracy']:.2f} on {teacher['vqa_n']:,} test questions; seeds "
              f"{', '.join(map(str, d['seeds']))}; mean +- standard deviation over the seeds. Captions scored by "
              f"**{backend}**. Command: `{d['command']}` ([{part}.json](docs/results/quality/{part}.json))."]
    return "\n".join(lines)


def zoo_block() -> str:
    return _zoo_like("zoo")


def taid_block() -> str:
    return _zoo_like("taid")


def gap_block() -> str:
    d = load("quality/gap.json")
    teachers = sorted({(r["teacher_params"], r["teacher"], r["teacher_vqa"]) for r in d["rows"]})
    losses = list(dict.fromkeys(r["loss"] for r in d["rows"]))
    lines = ["| loss | " + " | ".join(f"teacher {n} ({p / 1e6:.1f} M, {acc:.1f})" for p, n, acc in teachers) + " |",
             "|---|" + "---:|" * len(teachers)]
    for loss in losses:
        cells = []
        for _, name, _ in teachers:
            values = [r["vqa"] for r in d["rows"] if r["loss"] == loss and r["teacher"] == name]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.2f} +- {sd:.2f}")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += ["", f"Student VQA accuracy, mean +- standard deviation over seeds {', '.join(map(str, d['seeds']))}. "
              f"Command: `{d['command']}` ([gap.json](docs/results/quality/gap.json))."]
    return "\n".join(lines)


# ---- the transfer regime (docs/results/quality/transfer/, scripts/bench_quality.py) ------------------

TRANSFER_LABELS = {**LOSS_LABELS, "taid_ce": "taid + CE (distil_ratio 0.5)", "taid_alpha": "taid, alpha = 4 / steps"}


def _transfer(part: str) -> dict[str, Any] | None:
    path = RESULTS / "quality" / "transfer" / f"{part}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _link(part: str) -> str:
    return f"[{part}.json](docs/results/quality/transfer/{part}.json)"


def _not_run(part: str) -> str:
    return f"Not run yet: `python scripts/bench_quality.py --parts {part}` writes this table."


def _status(d: dict[str, Any]) -> str:
    if d.get("complete"):
        return ""
    return f" **Partial** (the run had not finished this part): rerun `{d['command']}` to complete it; finished runs are reused."


def _transfer_zoo_like(part: str) -> str:
    d = _transfer(part)
    if d is None:
        return _not_run(part)
    pairs = {p["baseline"]: p for p in d["paired"]}
    backends = ", ".join(sorted({b for r in d["rows"] for b in r["caption_backend"]}))
    lines = [f"| loss | VQA accuracy | seeds | taid - loss, paired | taid ahead | CIDEr-D ({backends}) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(d["rows"], key=lambda r: -r["vqa_mean"]):
        p = pairs.get(r["loss"])
        diff, wins = ("", "") if p is None else (f"{p['mean_diff']:+.2f} +- {p['std_diff']:.2f}", f"{p['wins']}/{p['n']}")
        label = "sft on the teacher's answers" if part == "noanswer" and r["loss"] == "sft" else TRANSFER_LABELS.get(r["loss"], r["loss"])
        lines.append(f"| {label} | {r['vqa_mean']:.2f} +- {r['vqa_std']:.2f} | "
                     f"{len(r['seeds'])} | {diff} | {wins} | {r['cider_mean']:.1f} +- {r['cider_std']:.1f} |")
    settings, teacher = d["settings"], d["teacher"]
    lines += ["", f"Teacher {teacher['vqa_accuracy']:.2f} on {teacher['vqa_n']:,} test questions, trained on "
              f"{d['teacher_data_records']:,} scenes; students on {d['transfer_records']:,} scenes, "
              f"{d.get('student_steps', settings['student_steps'])} steps, batch {settings['student_batch']}, lr {settings['student_lr']}; "
              f"majority-answer baseline {d['majority']:.2f}; mean +- standard deviation over seeds; the run had taken "
              f"{d['seconds'] / 60:.0f} min when this was written, load average "
              f"{d['machine']['load_average_1_5_15min_at_start'][0]:.1f} (1 min) at its start. Command: `{d['command']}` "
              f"({_link(part)}).{_status(d)}", "",
              *[f"- {s}" for s in d["statements"]]]
    return "\n".join(lines)


def transfer_zoo_block() -> str:
    return _transfer_zoo_like("zoo") + _regimes_compared()


def _regimes_compared() -> str:
    """The teacher's value in each regime: how far fkl, dkd and taid get above sft (mean VQA)."""
    transfer = _transfer("zoo")
    if transfer is None:
        return ""
    lifts = []
    for regime, rows in (("transfer", transfer["rows"]), ("same-data", load("quality/zoo.json")["rows"])):
        by = {r["loss"]: r["vqa_mean"] for r in rows}
        if "sft" not in by:
            return ""
        lifts.append(f"{regime}: " + ", ".join(f"{loss} {by[loss] - by['sft']:+.2f}" for loss in ("fkl", "dkd", "taid") if loss in by))
    return ("\n- The teacher's value in the two regimes, mean VQA points above sft: " + "; ".join(lifts)
            + " ([zoo.json](docs/results/quality/zoo.json) for same-data).")


def transfer_plateau_block() -> str:
    return _transfer_zoo_like("plateau")


def transfer_noanswer_block() -> str:
    return _transfer_zoo_like("noanswer")


def transfer_gap_block() -> str:
    d = _transfer("gap")
    if d is None:
        return _not_run("gap")
    teachers = sorted(d["teachers"], key=lambda t: t["params"])
    lines = ["| student loss | " + " | ".join(f"teacher {t['name']} ({t['params'] / 1e6:.1f} M, {t['steps']} steps, VQA {t['vqa']:.1f})"
                                             for t in teachers) + " |", "|---|" + "---:|" * len(teachers)]
    for loss in dict.fromkeys(p["loss"] for p in d["rows"]):
        cells = []
        for t in teachers:
            values = [p["vqa"] for p in d["rows"] if p["loss"] == loss and p["teacher"] == t["name"]]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.2f} +- {sd:.2f} ({len(values)})" if values else "")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    steps = d.get("student_steps", d["settings"]["student_steps"])
    lines += ["", f"Student VQA accuracy after {steps} steps on the transfer set, mean +- standard deviation (seeds in "
              f"brackets); majority-answer baseline {d['majority']:.2f}. Command: `{d['command']}` "
              f"({_link('gap')}).{_status(d)}", "", *[f"- {s}" for s in d["statements"]]]
    return "\n".join(lines)


def transfer_sizing_block() -> str:
    d = _transfer("sizing")
    if d is None:
        return _not_run("sizing")
    steps = sorted({p["steps"] for p in d["points"]})
    losses = list(dict.fromkeys(p["loss"] for p in d["points"]))
    lines = ["| student steps | " + " | ".join(losses) + " |", "|---:|" + "---:|" * len(losses)]
    for n in steps:
        cells = [next((f"{p['vqa']:.2f}" for p in d["points"] if p["steps"] == n and p["loss"] == loss), "") for loss in losses]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"VQA accuracy on seed 0. Command: `{d['command']}` "
              f"({_link('sizing')}).{_status(d)}", "", *[f"- {s}" for s in plateau_statements(d["points"])]]
    return "\n".join(lines)


# ---- generation --------------------------------------------------------------------------------


def generation_block() -> str:
    """One line: tokens/s of the Hugging Face and vLLM backends on the same model and prompts."""
    d = load("bench_generation.json")
    hf, vl = d["sides"]["hf"]["tokens_per_s"], d["sides"]["vllm"]["tokens_per_s"]
    m = d["model"]
    return (f"Greedy generation, {d['prompts']} text VQA prompts, up to {d['max_new_tokens']} new tokens, batch "
            f"{d['batch_size']}, a {m['parameters'] / 1e6:.1f}M-parameter Qwen2 ({m['dtype']}) on "
            f"{d['machine']['cpu_count']} CPU cores ({_load_text(d['machine'])}): Hugging Face `generate` "
            f"{hf:,.0f} tokens/s, vLLM {vl:,.0f} tokens/s ({_ratio(vl, hf)}; median of {d['repeats']}; "
            f"{d['same_answers']}/{d['prompts']} answers identical). Command: `{d['command'].strip()}` "
            "([bench_generation.json](docs/results/bench_generation.json)).")


# ---- the README's summary ---------------------------------------------------------------------

FULL = "docs/results/README.md"


# ---- LoRA against full fine-tuning -------------------------------------------------------------

LORA_RESULT = "bench_scale_lora.json"
LORA_MODES = {"bf16": "full fine-tuning", "lora_r8": "LoRA r=8", "lora_r64": "LoRA r=64",
              "lora_r8_bf16base": "LoRA r=8, bf16 base"}


def lora_block() -> str:
    """What a LoRA student saves per rank next to full fine-tuning, on one pair in one run."""
    d = load(LORA_RESULT)
    m = d["model"]
    lines = ["| student | trainable parameters | weights (all) | AdamW state | params + grads + AdamW | peak (process) | step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, label in LORA_MODES.items():
        r = d[mode]
        lines.append(f"| {label} | {r['trainable_params'] / 1e6:,.2f} M | {r['weights_mb']:,.0f} MB | {r['optimizer_state_mb']:,.1f} MB | "
                     f"{r['param_optim_mb']:,.1f} MB | {r['peak_mb']:,.0f} MB | {r['step_s']:.1f} s |")
    full, lora = d["bf16"], d["lora_r8_bf16base"]
    lines += ["", f"{m['family']}: student {m['student_params'] / 1e6:,.0f} M parameters ({m['student_lm_layers']} LM + "
              f"{m['vision_layers']} vision layer, a {m['vocab_size']:,}-row tied head), bf16 teacher, {m['records_per_step']} records "
              f"of {m['tokens_per_record']} tokens a step, bf16 autocast, adapters on every linear layer but the head; one process "
              f"each on {d['device']} ({_load_text(d['machine'])} at the start: the step times are indicative only). The peak is "
              f"the whole process (teacher, libraries, data) on CPU: LoRA over a bf16 base peaks {full['peak_mb'] - lora['peak_mb']:,.0f} MB "
              f"lower. Command: `python scripts/bench_scale.py --steps {d['steps']} --modes {','.join(LORA_MODES)} --out "
              f"docs/results/{LORA_RESULT}`; [{LORA_RESULT}](docs/results/{LORA_RESULT})."]
    return "\n".join(lines)


def summary_block() -> str:
    """A few lines over every result, each linking to its table and JSON (README.md)."""
    demo = load("demo_default.json")
    by_model = {r["model"]: r for r in demo["rows"]}
    students = ", ".join(f"{name.split()[0]} {by_model[name]['vqa_accuracy']:.1f}" for name in by_model if name != "teacher")
    loss = load("bench_loss.json")
    s = loss["summary"]
    plain = load(Path(s["naive_source"]).name)["naive"][s["naive_reference"]]
    taid = next(r for r in loss["rows"] if r["loss"] == "taid")
    trl = load("bench_vs_trl_v151936.json")
    strongest = SIDE_NAMES.get(trl.get("strongest_trl_side", "trl_gkd_full_logits"), "TRL")
    cache = load("cache_quality.json")
    speed = load("bench_cache.json")
    lines = [
        f"- **Demo** (`taid-vlm demo`, seed 0, {demo['total_seconds'] / 60:.0f} min on {demo['machine']['cores']} cores): "
        f"teacher {by_model['teacher']['vqa_accuracy']:.1f} VQA accuracy; {by_model['teacher']['params'] / by_model['taid student']['params']:.1f}x "
        f"smaller students {students} ([table]({FULL}#the-demo), [demo_default.json](docs/results/demo_default.json)).",
        f"- **Loss engine** ({s['tokens']:,} tokens x {s['vocab']:,} vocabulary, {s['device']}): peak {taid['peak_mb']:,.0f} MB "
        f"against the plain path's {plain['peak_mb']:,.0f} MB, {taid['ratio']:.2f}x the time of the four GEMMs any fused "
        f"loss computes ([table]({FULL}#speed-and-memory-of-the-loss), [bench_loss.json](docs/results/bench_loss.json)).",
        f"- **Against TRL** (one forward-KL step, vocabulary {trl['vocab']:,}): {_speed(trl['trl_step_s'], trl['ours_step_s'])} "
        f"{'as' if trl['ours_step_s'] <= trl['trl_step_s'] else 'than'} {strongest} with "
        f"{_ratio(trl['trl_peak_mb'], trl['ours_peak_mb'])} less memory "
        f"([table]({FULL}#side-by-side-with-trl), [bench_vs_trl_v151936.json](docs/results/bench_vs_trl_v151936.json)).",
        f"- **Teacher cache** (top-{speed['top_k']}): {speed['step_speedup']:.2f}x less work per student step, "
        f"{speed['bytes_per_token']:.0f} bytes per token; TAID students {cache['cached_minus_live_vqa']:+.2f} VQA points "
        f"from the live teacher's, {'within' if cache['within_seed_spread'] else 'outside'} the seed spread "
        f"([table]({FULL}#offline-teacher-cache), [bench_cache.json](docs/results/bench_cache.json)).",
    ]
    lora, full = (load(LORA_RESULT)[mode] for mode in ("lora_r8", "bf16"))
    lines.append(f"- **LoRA students** (r=8 against full fine-tuning, one pair at Qwen2-VL-2B widths): "
                 f"{lora['trainable_params'] / full['trainable_params'] * 100:.1f}% of the parameters trained, AdamW state "
                 f"{lora['optimizer_state_mb']:,.1f} MB instead of {full['optimizer_state_mb']:,.0f} MB "
                 f"([table]({FULL}#lora-students-against-full-fine-tuning), [{LORA_RESULT}](docs/results/{LORA_RESULT})).")
    plateau, gap = _transfer("plateau"), _transfer("gap")
    if plateau is not None:
        vqa = {r["loss"]: r["vqa_mean"] for r in plateau["rows"]}
        best = max((loss for loss in vqa if loss != "sft"), key=vqa.get)
        vs_sft = next(p for p in plateau["paired"] if p["baseline"] == "sft")
        lines.append(
            f"- **Quality** on the synthetic transfer benchmark ({len(plateau['seeds'])} seeds, {plateau['student_steps']} student steps): "
            f"teacher {plateau['teacher']['vqa_accuracy']:.1f}, sft {vqa['sft']:.1f}, taid {vqa['taid']:.1f} "
            f"(taid {vs_sft['verdict']} sft, ahead on {vs_sft['wins']} of {vs_sft['n']} seeds), best {best} {vqa[best]:.1f} "
            f"([tables]({FULL}#quality-on-the-synthetic-benchmark), {_link('plateau')}).")
    if gap is not None:
        verdict = gap["statements"][-1].rstrip(".")
        lines.append(f"- **Capacity gap**: {verdict[0].lower() + verdict[1:]} ({_link('gap')}).")
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[], str]] = {
    "summary": summary_block, "generation": generation_block, "demo": demo_block, "loss": loss_block, "loss_ce": loss_ce_block, "cache": cache_block, "trl": trl_block,
    "zoo": zoo_block, "gap": gap_block, "taid": taid_block,
    "transfer-zoo": transfer_zoo_block, "transfer-gap": transfer_gap_block, "transfer-noanswer": transfer_noanswer_block,
    "transfer-sizing": transfer_sizing_block, "transfer-plateau": transfer_plateau_block, "lora": lora_block,
}


LINK = re.compile(r"(\]\()(?!https?://|#)([^)\s]+)(\))")


def relink(text: str, document: Path) -> str:
    """Markdown links written from the repository root, rewritten relative to ``document``'s folder."""
    def rewrite(match: re.Match) -> str:
        target = os.path.relpath(ROOT / match.group(2), document.parent)
        return match.group(1) + Path(target).as_posix() + match.group(3)

    return LINK.sub(rewrite, text)


def render(text: str, document: Path = DOCUMENTS[0]) -> str:
    """``text`` (the content of ``document``) with every generated block rewritten from its JSON;
    unknown block names fail."""
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise KeyError(f"readme_tables: {document.name} has a block {name!r}; known blocks: {', '.join(RENDERERS)}")
        return match.group(1) + relink(RENDERERS[name](), document) + "\n" + match.group(4)

    return BLOCK.sub(replace, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a document differs from the JSON, write nothing")
    parser.add_argument("documents", nargs="*", type=Path, default=list(DOCUMENTS),
                        help="the Markdown files to render (default: README.md and docs/results/README.md)")
    args = parser.parse_args()
    stale = 0
    for document in args.documents:
        current = document.read_text(encoding="utf-8")
        fresh = render(current, document.resolve())
        if args.check:
            if fresh != current:
                print(f"{document}: generated tables are out of date; run python scripts/readme_tables.py", file=sys.stderr)
                stale += 1
            else:
                print(f"{document}: generated tables match docs/results/")
            continue
        write_table(document, fresh)
        print(f"rewrote {len(BLOCK.findall(fresh))} generated block(s) in {document}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
