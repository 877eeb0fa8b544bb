"""Quality benchmark on the synthetic shapes set, in two regimes.

``--regime transfer`` (the default; scripts/quality_transfer.py says how it is built): the
teacher learns from the demo's whole scenes set, the students only from a small transfer set
(13x smaller), so the teacher knows more than the student's data shows. Parts, in the order
they run by default: ``plateau`` (every loss, 5 seeds, at the budget where the students end their
rise; taid's per-seed paired difference against each), ``gap`` (three teachers of growing size,
taid vs fkl vs skew_fkl, same budget), ``noanswer`` (the transfer set's answers withheld: the
teacher answers it once and students learn from that), and on request ``zoo`` (the plateau zoo
at a third of the budget: which loss learns fastest from the teacher) and ``sizing`` (a few
losses at a few budgets, how the student budget was chosen).
Outputs go to ``OUT/transfer/{part}.{json,md,png}``; each JSON is rewritten after every
finished seed (``complete: false`` until the part ends) and carries the sentences the numbers
support (scripts/quality_stats.py).

``--regime same-data``: the earlier benchmark, everyone trained on the demo's set.
Part 1, ``zoo``: one trained teacher; for every loss of the zoo (and TAID with the linear
schedule only) and every seed, a student of the demo's student size is distilled under the
same budget (steps, batch, lr); the seed sets the student's initial weights and data order.
Reports mean +- std (over seeds) of VQA accuracy and CIDEr-D, and the share of the
sft -> teacher gap each loss closes.

Part 2, ``gap``: teachers of growing size (each trained from scratch, bigger ones for more
steps), one student size; students distilled with taid, fkl and skew_fkl. TAID's central
claim is that its student improves as the teacher grows while the others stall or degrade.

Part 3, ``taid``: TAID's own settings on the zoo's teacher and seeds (t_start 0.2 / 0.4 / 0.7,
linear schedule only, an alpha large enough for the adaptive rule to act in a short run), to
see which of them matters where TAID does not win.

Same-data outputs under ``--out`` (default docs/results/quality): ``{zoo,gap,taid}.{json,md,png}``; each
JSON holds the exact command and the machine. In both regimes finished student runs are reused when nothing
that decides them changed, so an interrupted benchmark resumes where it stopped.
Captions are scored by pycocoevalcap whenever Java runs (``--caption-backend auto``, the default)
and by the python fallback only without Java or when asked for; the backend actually used is
recorded in every JSON and named in every table. VQA accuracy uses the official rules
(docs/EVALUATION.md); the question counts in the tables are those actually scored.
Each teacher runs ONCE: its top-64 log-probs over the students' training set go to a
teacher cache that every loss and seed trains from (same-data: ``--cache-top-k 0`` for a live
teacher per run; docs/TEACHER_CACHE.md says what the top-k approximation changes per loss).

Usage:
  python scripts/bench_quality.py                                   # transfer: plateau, gap, noanswer; seeds 0-4
  python scripts/bench_quality.py --jobs 2 --threads 1               # the same, a helper sharing the plateau runs
  python scripts/bench_quality.py --jobs 2 --threads 1 --parts zoo   # the 200-step zoo (learning speed)
  python scripts/bench_quality.py --parts sizing --seeds 0           # how the student budget was sized
  python scripts/bench_quality.py --parts xtok --seeds 0 1 2 --threads 1   # cross-tokenizer students vs sft
  python scripts/bench_quality.py --regime same-data --preset default --seeds 0 1 2 --parts zoo gap
  python scripts/bench_quality.py --preset quick --seeds 0 --losses sft taid --parts zoo   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_report as report  # noqa: E402
import quality_transfer as transfer  # noqa: E402
from benchlib import machine, write_json  # noqa: E402

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
    from taid_vlm.demo.presets import text_config

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


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def teacher_cache(work: Path, teacher_dir: Path, data_dir: Path, top_k: int) -> Path:
    """The teacher's top-k log-probs over the training set, computed once for the whole sweep
    (every loss and seed reads them; a finished cache is reused, an interrupted one resumed)."""
    from taid_vlm.data import load_records
    from taid_vlm.models import load
    from taid_vlm.teacher_cache import build_cache

    out = work / f"teacher-cache-k{top_k}"
    build_cache(load(str(teacher_dir), role="teacher"), str(teacher_dir), load_records(data_dir / "train.jsonl"), out,
                top_k=top_k, progress=False)
    return out


def run_zoo(part: str, names: list[str], seeds: list[int], preset, work: Path, data_dir: Path, tokenizer,
            teacher_dir: Path, teacher_row: dict, cache_dir: Path | None = None) -> dict:
    from taid_vlm.demo.pipeline import distil_student, evaluate_models, save_initial_model

    per_loss: dict[str, list[dict]] = {name: [] for name in names}
    for seed in seeds:
        init = save_initial_model(work / f"init-student-{seed}", preset.student, tokenizer, False, preset.image_size, 202 + seed)
        students = {}
        for name in names:
            loss, extra = loss_config(name)
            t_start = extra.pop("t_start", preset.t_start)
            if cache_dir is not None and loss != "sft":
                extra["teacher_cache"] = str(cache_dir)
            run = distil_student(work / f"zoo-{name}-{seed}", init, teacher_dir, data_dir, loss, preset.student_budget,
                                 seed, t_start, progress=False, reuse=True, **extra)
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
    from taid_vlm.demo.pipeline import distil_student, evaluate_models, save_initial_model, train_teacher

    rows = []
    for name, spec, budget in teacher_ladder(preset):
        init = save_initial_model(work / f"init-teacher-{name}", spec, tokenizer, False, preset.image_size, 101)
        teacher_dir, _ = train_teacher(work / f"gap-teacher-{name}", init, data_dir, budget, 0, progress=False)
        teacher_score = evaluate_models(work / f"gap-eval-teacher-{name}", {"teacher": teacher_dir}, data_dir, preset, False)["rows"][0]
        for seed in args.gap_seeds:
            student_init = save_initial_model(work / f"init-student-{seed}", preset.student, tokenizer, False, preset.image_size, 202 + seed)
            students = {loss: distil_student(work / f"gap-{name}-{loss}-{seed}", student_init, teacher_dir, data_dir,
                                             loss, preset.student_budget, seed, preset.t_start, progress=False,
                                             reuse=True) / "student"
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["rows"], key=lambda r: -r["vqa_mean"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    colors = ["#1f77b4" if r["loss"].startswith("taid") else "#9ecae1" for r in rows]
    ax.bar([r["loss"] for r in rows], [r["vqa_mean"] for r in rows], yerr=[r["vqa_std"] for r in rows], color=colors, capsize=3)
    ax.axhline(result["teacher"]["vqa_accuracy"], color="#555555", linestyle="--", label="teacher")
    ax.set_ylabel("VQA accuracy (x100)")
    ax.set_title(f"{title}, {len(result['seeds'])} seed(s), mean +- std")
    ax.tick_params(axis="x", rotation=35)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gap(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_existing(out: Path, parts: list[str]) -> None:
    """Tables and plots from committed JSON, with the header naming the command that produced it."""
    for part in parts:
        path = out / f"{part}.json"
        if not path.is_file():
            sys.exit(f"bench_quality: --render-only needs {path}; run the benchmark for part {part!r} first")
        result = json.loads(path.read_text())
        header = f"Command: `{result['command']}`"
        if part == "gap":
            (out / "gap.md").write_text(gap_markdown(result, header))
            plot_gap(result, out / "gap.png")
        else:
            (out / f"{part}.md").write_text(zoo_markdown(result, header))
            plot_zoo(result, out / f"{part}.png", "Loss zoo" if part == "zoo" else "TAID settings")
        print(f"rewrote {out / part}.md and .png from {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", default="transfer", choices=["transfer", "same-data"],
                        help="transfer (default): teacher on the big set, students on a small transfer set "
                             "(scripts/quality_transfer.py); same-data: everyone on the demo's set")
    parser.add_argument("--preset", default="default", choices=["quick", "default", "full"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 0 1 2 3 4 (transfer), 0 1 2 (same-data)")
    parser.add_argument("--gap-seeds", type=int, nargs="+", default=None, help="seeds of the capacity-gap part (default: --seeds)")
    parser.add_argument("--losses", nargs="+", default=None, help=f"zoo losses; transfer: {', '.join(transfer.ZOO)}; "
                        f"same-data: {', '.join(ZOO)}")
    parser.add_argument("--parts", nargs="+", default=None,
                        help=f"transfer: {', '.join(transfer.PARTS)} (default: plateau gap noanswer, in that order); "
                             "same-data: zoo gap taid")
    parser.add_argument("--caption-backend", default="auto", choices=["auto", "pycocoevalcap", "python"],
                        help="auto: pycocoevalcap when Java runs, else the python fallback (named in every table)")
    parser.add_argument("--work", default="runs/bench-quality", help="where checkpoints and evaluations go")
    parser.add_argument("--out", default="docs/results/quality", help="where the tables, plots and JSON go "
                        "(the transfer regime writes to OUT/transfer)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the .md tables and plots from the JSON already in --out (no training)")
    parser.add_argument("--cache-top-k", type=int, default=64,
                        help="students read the teacher's top-k from a cache built once (same-data only: 0 = live teacher)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="transfer: processes training the plateau and zoo runs side by side (2 with --threads 1 on "
                             "a 2-core machine); helpers take the seeds and losses in reverse order, the main process "
                             "waits for a run a helper is writing and reuses it when done")
    parser.add_argument("--helper", type=int, default=0, help=argparse.SUPPRESS)  # set by --jobs for its helpers
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (1 on a shared 2-core machine: two threads fighting other "
                             "processes for the cores made each step several times slower)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more processes")
    transfer_regime = args.regime == "transfer"
    args.seeds = args.seeds or ([0, 1, 2, 3, 4] if transfer_regime else [0, 1, 2])
    args.gap_seeds = args.gap_seeds or args.seeds
    args.parts = args.parts or (["plateau", "gap", "noanswer"] if transfer_regime else ["zoo", "gap", "taid"])
    args.losses = args.losses or list(transfer.ZOO if transfer_regime else ZOO)
    allowed_parts, allowed_losses = (transfer.PARTS, transfer.ZOO) if transfer_regime else (("zoo", "gap", "taid"), ZOO)
    for kind, given, allowed in (("--parts", args.parts, allowed_parts), ("--losses", args.losses, allowed_losses)):
        unknown = [g for g in given if g not in allowed]
        if unknown:
            parser.error(f"{kind} {' '.join(unknown)} not in the {args.regime} regime; choose from {', '.join(allowed)}")
    if transfer_regime:
        if args.render_only:
            render_transfer(Path(args.out) / "transfer", args.parts)
        else:
            main_transfer(args)
        return
    if args.render_only:
        render_existing(Path(args.out), args.parts)
        return
    main_same_data(args)


def render_transfer(out: Path, parts: list[str]) -> None:
    for part in parts:
        path = out / f"{part}.json"
        if not path.is_file():
            print(f"bench_quality: no {path} yet (part {part!r} has not written results); skipped", file=sys.stderr)
            continue
        result = json.loads(path.read_text())
        refreshed = transfer.refresh(part, result)
        if refreshed != result:
            write_json(path, refreshed)
        report.render(part, refreshed, out)
        print(f"rewrote {out / part}.md and .png from {path}" + (" (statements recomputed)" if refreshed != result else ""))


def main_transfer(args) -> None:
    """The transfer regime (scripts/quality_transfer.py): teacher first, then the parts in order."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from taid_vlm.demo import PRESETS
    from taid_vlm.demo.pipeline import (evaluate_models, initial_models, majority_baseline, prepare_data, train_teacher,
                                        transfer_data)

    settings = transfer.SETTINGS[args.preset]
    preset = PRESETS[args.preset]
    preset = preset.with_overrides(caption_backend=args.caption_backend, eval_questions=settings.eval_questions,
                                   eval_captions=settings.eval_captions)
    work, out = Path(args.work) / "transfer", Path(args.out) / "transfer"
    work.mkdir(parents=True, exist_ok=True)
    started, load_at_start = time.perf_counter(), os.getloadavg()
    command = " ".join(["python", *sys.argv])
    big = prepare_data(work / "data", preset, False, 0)
    init = initial_models(work / "init", big, preset, False, 0)
    tokenizer = AutoTokenizer.from_pretrained(init["teacher"])
    teacher_dir, _ = train_teacher(work / "teacher", init["teacher"], big, preset.teacher_budget, 0, progress=True)
    data = transfer_data(work / "transfer-data", big, settings.transfer_records)
    teacher_row = evaluate_models(work / "eval-teacher", {"teacher": teacher_dir}, data, preset, False)["rows"][0]
    majority = majority_baseline(data)["overall"] * 100
    print(f"teacher: VQA {teacher_row['vqa_accuracy']:.2f} (majority-answer baseline {majority:.2f})", flush=True)
    transfer.build_teacher_cache(work / "cache-data", teacher_dir, data, top_k=args.cache_top_k)

    def write(part: str, payload: dict) -> None:
        payload = {**payload, "machine": machine(load_at_start), "seconds": time.perf_counter() - started}
        write_json(out / f"{part}.json", payload)
        report.render(part, payload, out)

    header = {"regime": "transfer", "command": command, "preset": preset.name, "settings": dataclasses.asdict(settings),
              "teacher": teacher_row, "teacher_budget": dataclasses.asdict(preset.teacher_budget),
              "teacher_data_records": preset.n_train, "transfer_records": settings.transfer_records,
              "majority": majority, "seeds": list(args.seeds), "teacher_cache_top_k": args.cache_top_k}
    ctx = transfer.Context(preset, settings, work, big, data, tokenizer, teacher_dir, teacher_row, majority, write,
                           args.cache_top_k)
    if args.helper:  # a --jobs helper trains its share of the runs; the main process evaluates and reports
        for part in args.parts:
            transfer.train_zoo_runs(ctx, part, list(args.losses), list(args.seeds))
        return
    helpers = start_helpers(args, work)
    if helpers:  # a plain kill (SIGTERM) must run the cleanup below too, or the helpers outlive us
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for part in args.parts:  # in the order given: the most important first
            print(f"part {part} ...", flush=True)
            if part == "sizing":
                transfer.run_sizing(ctx, header)
            elif part in ("zoo", "plateau"):
                transfer.run_zoo(ctx, list(args.losses), list(args.seeds), header, part)
            elif part == "gap":
                transfer.run_gap(ctx, list(args.gap_seeds), {**header, "seeds": list(args.gap_seeds)})
            elif part == "xtok":
                transfer.run_xtok(ctx, list(args.seeds), header)
            else:
                names = [n for n in args.losses if n in transfer.NOANSWER_LOSSES]  # --losses narrows (and orders) it too
                transfer.run_noanswer(ctx, names, list(args.seeds), header)
            print((out / f"{part}.md").read_text(), flush=True)
    finally:  # on success a helper's remaining work is already done or reused; on an error or Ctrl-C it must not outlive us
        for helper in helpers:
            helper.terminate()
            helper.wait()
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "out": str(out)}))


HELPED_PARTS = ("plateau", "zoo", "xtok")  # the parts with many runs; the others build teachers and caches once


def start_helpers(args, work: Path) -> list:
    """``--jobs N``: N - 1 copies of this command that only train the plateau and zoo runs, each with
    the seeds (rotated) and losses reversed; logs in WORK/helper-I.log. Runs are keyed folders, so a
    run one process finished is reused by the others, and a run being written is waited for
    (quality_transfer.wait_for_other_process); the main process evaluates every seed."""
    import subprocess

    parts = [p for p in args.parts if p in HELPED_PARTS]
    if args.jobs <= 1 or not parts:
        return []
    helpers = []
    for i in range(1, args.jobs):
        seeds = list(reversed(args.seeds))
        shift = (i - 1) * len(seeds) // (args.jobs - 1)
        seeds = seeds[shift:] + seeds[:shift]
        command = [sys.executable, str(Path(__file__).resolve()), "--regime", "transfer", "--preset", args.preset,
                   "--parts", *parts, "--seeds", *map(str, seeds), "--losses", *reversed(args.losses),
                   "--caption-backend", args.caption_backend, "--work", args.work,
                   "--cache-top-k", str(args.cache_top_k), "--threads", str(args.threads or 1), "--helper", str(i)]
        with open(work / f"helper-{i}.log", "w") as log:  # the child keeps its own handle
            log.write("helper command: " + " ".join(command) + "\n")
            log.flush()
            helpers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        print(f"helper {i}: seeds {' '.join(map(str, seeds))} on {' '.join(parts)} (log {work / f'helper-{i}.log'})", flush=True)
    return helpers


def main_same_data(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers import AutoTokenizer

    from taid_vlm.demo import PRESETS
    from taid_vlm.demo.pipeline import evaluate_models, initial_models, prepare_data, train_teacher

    # The same-data regime's default is the demo as it was before it adopted the transfer set
    # (preset same-data: students on all 4,000 scenes, 150 steps of 32), which the committed
    # same-data tables measured under the name default.
    preset = PRESETS["same-data" if args.preset == "default" else args.preset]
    preset = preset.with_overrides(caption_backend=args.caption_backend)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    started, load_at_start = time.perf_counter(), os.getloadavg()
    data_dir = prepare_data(work / "data", preset, False, 0)
    init = initial_models(work / "init", data_dir, preset, False, 0)
    tokenizer = AutoTokenizer.from_pretrained(init["teacher"])
    command = " ".join(["python", *sys.argv])
    header = f"Command: `{command}` (preset `{preset.name}`: {preset.student_budget.steps} student steps, batch {preset.student_budget.batch_size}, lr {preset.student_budget.lr}; at most {preset.eval_questions or 'all'} test questions)"

    if "zoo" in args.parts or "taid" in args.parts:
        teacher_dir, _ = train_teacher(work / "teacher", init["teacher"], data_dir, preset.teacher_budget, 0, progress=False)
        teacher_row = evaluate_models(work / "eval-teacher", {"teacher": teacher_dir}, data_dir, preset, False)["rows"][0]
        print(f"teacher: VQA {teacher_row['vqa_accuracy']:.2f}", flush=True)
        cache_dir = teacher_cache(work, teacher_dir, data_dir, args.cache_top_k) if args.cache_top_k > 0 else None
    for part, names in (("zoo", list(args.losses)), ("taid", ["sft", "taid", "taid_linear", *TAID_VARIANTS])):
        if part not in args.parts:
            continue
        result = run_zoo(part, names, args.seeds, preset, work, data_dir, tokenizer, teacher_dir, teacher_row, cache_dir)
        write_json(out / f"{part}.json", {**result, "command": command, "teacher_cache_top_k": args.cache_top_k,
                                          "machine": machine(load_at_start),
                                          "seconds": time.perf_counter() - started})
        (out / f"{part}.md").write_text(zoo_markdown(result, header))
        plot_zoo(result, out / f"{part}.png", "Loss zoo" if part == "zoo" else "TAID settings")
        print(zoo_markdown(result, header))
    if "gap" in args.parts:
        gap = run_gap(args, preset, work, data_dir, tokenizer)
        write_json(out / "gap.json", {**gap, "command": command, "machine": machine(load_at_start),
                                      "seconds": time.perf_counter() - started})
        (out / "gap.md").write_text(gap_markdown(gap, header))
        plot_gap(gap, out / "gap.png")
        print(gap_markdown(gap, header))
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "out": str(out)}))


if __name__ == "__main__":
    main()
