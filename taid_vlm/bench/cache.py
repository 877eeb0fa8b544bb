"""Teacher cache benchmark: what a cached teacher costs on disk and saves per student step,
and whether a student distilled from a k = 64 cache is as good as one from the live teacher.

Part ``speed`` (default) on the demo pair (the ``same-data`` preset's teacher and student, initial
weights: step time and memory do not depend on what the weights have learnt):
  1. build a cache (top-k 64, bfloat16) over ``--records`` training records, timed;
  2. run the student for ``--steps`` optimizer steps with the live teacher and from the cache,
     each in its own subprocess (so a peak belongs to one variant), alternating live / cached
     ``--repeats`` times so that load on this shared machine hits both alike;
  prints ONE JSON line and writes docs/results/bench_cache.json: bytes_per_token, build_s,
  cached_step_s, live_step_s (median CPU seconds per step over steps 2..N of every repeat, one
  torch thread per run; wall-clock medians beside them), cached_peak_mb, live_peak_mb (peak RSS
  of the training process after its imports), with the load average at start and end.

Part ``quality``: the demo's teacher (trained as the demo trains it), one k = 64 cache built
from it, and for each seed a TAID student from the live teacher and one from the cache (same
initial weights, data order and budget; the ``same-data`` preset, which was the default demo when
docs/results/cache_quality.json was measured with ``--preset default``); both are evaluated like the demo (VQA accuracy,
CIDEr-D). Writes cache_quality.json and cache_quality.md into --out.

Usage:
  python scripts/bench_cache.py                                   # speed, same-data preset
  python scripts/bench_cache.py --parts quality --seeds 0 1 2     # quality (long: trains a teacher)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from .results import write_result, write_table
from .runner import Run, child_env, current_rss_mb, max_rss_mb, peak_rss_mb, print_json, reset_peak_rss, run_child
from .runs import reused_or_distilled


def build(teacher_dir: Path, data_file: Path, out: Path, top_k: int, logit_dtype: str, batch_size: int) -> dict:
    """Build (or reuse) a cache; returns its size, tokens and the build time (model load excluded)."""
    from ..data import load_records
    from ..models import load
    from ..teacher_cache import build_cache

    records = load_records(data_file)
    teacher = load(str(teacher_dir), role="teacher")
    started, cpu_started = time.perf_counter(), time.process_time()
    result = build_cache(teacher, str(teacher_dir), records, out, top_k=top_k, logit_dtype=logit_dtype,
                         batch_size=batch_size, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    size = sum(p.stat().st_size for p in (out / "shards").glob("shard-*.safetensors"))
    import torch
    from safetensors import safe_open

    tails = []
    for shard in (out / "shards").glob("shard-*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            tails.append(f.get_tensor("tail"))
    tail_mass = torch.cat(tails).double().exp()
    tokens = int(tail_mass.numel())
    return {"bytes": size, "tokens": tokens, "bytes_per_token": size / max(tokens, 1), "build_s": seconds,
            "build_cpu_s": cpu_seconds, "build_threads": torch.get_num_threads(),
            "tail_mass": {"mean": float(tail_mass.mean()), "median": float(tail_mass.median()),
                          "p95": float(tail_mass.quantile(0.95)), "max": float(tail_mass.max())},
            "built_now": result.shards_built, "shards": result.shards_total, "records": len(records)}


def child(args: argparse.Namespace) -> None:
    """One training run (live or cached) in this process; prints its step times and peak memory."""
    from ..train import distill, load_config
    from ..train.metrics import read_metrics

    values = dict(student=args.student, data=args.data, output=args.output, loss="taid", max_steps=args.steps,
                  batch_size=args.batch_size, save_every=10**6, log_every=1, progress=False, seed=0, overwrite=True,
                  teacher=args.teacher)
    if args.child == "cached":
        values["teacher_cache"] = args.cache
    # CPU seconds per step: the loop logs every step, so the process's CPU clock read at each log
    # call brackets one step. On a shared machine wall time follows everyone's load; the CPU time
    # of a one-thread process follows only its own work.
    from ..train import metrics

    cpu_marks: list[float] = []
    original_log = metrics.MetricsLog.log

    def log_with_cpu_clock(self, row):
        cpu_marks.append(time.process_time())
        return original_log(self, row)

    metrics.MetricsLog.log = log_with_cpu_clock
    baseline = current_rss_mb()  # torch, transformers and the package imported, nothing loaded yet
    reset = reset_peak_rss()
    distill(load_config(None, values))
    seconds = [r["seconds"] for r in read_metrics(Path(args.output) / "metrics.jsonl") if "seconds" in r]
    peak = peak_rss_mb() if reset else max_rss_mb()
    cpu = [b - a for a, b in zip(cpu_marks, cpu_marks[1:])]  # steps 2..N
    print_json({"variant": args.child, "step_seconds": seconds, "step_cpu_seconds": cpu, "peak_mb": peak,
                "baseline_mb": baseline, "peak_is_since_imports": reset, "threads": torch_threads()})


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def speed(args: argparse.Namespace, preset) -> dict:
    from ..demo.pipeline import initial_models, prepare_data

    work = Path(args.work)
    sized = preset.with_overrides(n_train=args.records, n_test=8)
    data_dir = prepare_data(work / "speed-data", sized, False, 0)
    init = initial_models(work / "speed-init", data_dir, sized, False, 0)
    cache_dir = work / f"speed-cache-k{args.top_k}"
    shutil.rmtree(cache_dir, ignore_errors=True)  # build_s times a whole build, never a resumed one
    built = build(init["teacher"], data_dir / "train.jsonl", cache_dir, args.top_k, args.logit_dtype, args.build_batch_size)
    runs: dict[str, list[dict]] = {"live": [], "cached": []}
    env = child_env(OMP_NUM_THREADS="1")
    for repeat in range(args.repeats):
        for variant in ("live", "cached"):
            argv = ["--child", variant, "--student", str(init["student"]),
                    "--teacher", str(init["teacher"]), "--cache", str(cache_dir), "--data", str(data_dir / "train.jsonl"),
                    "--output", str(work / f"speed-run-{variant}"), "--steps", str(args.steps),
                    "--batch-size", str(preset.student_budget.batch_size)]
            runs[variant].append(run_child("cache", argv, f"{variant} run", env=env, timeout=3600))
            print(f"  repeat {repeat}: {variant} median step {statistics.median(runs[variant][-1]['step_cpu_seconds']):.3f} CPU s",
                  file=sys.stderr, flush=True)

    def median_step(variant: str) -> float:
        return statistics.median(s for r in runs[variant] for s in r["step_cpu_seconds"])

    def median_wall(variant: str) -> float:
        return statistics.median(s for r in runs[variant] for s in r["step_seconds"][1:])

    k = args.top_k
    return {
        "bytes_per_token": round(built["bytes_per_token"], 1), "build_s": round(built["build_s"], 2),
        "build_cpu_s": round(built["build_cpu_s"], 2), "build_threads": built["build_threads"],
        "cached_step_s": round(median_step("cached"), 4), "live_step_s": round(median_step("live"), 4),
        "cached_peak_mb": round(max(r["peak_mb"] for r in runs["cached"]), 1),
        "live_peak_mb": round(max(r["peak_mb"] for r in runs["live"]), 1),
        "peak_mb_means": "peak RSS of the training process from the moment its imports were done (models, data, steps); "
                         "baseline_mb in per_run is the RSS of those imports",
        "step_speedup": round(median_step("live") / median_step("cached"), 3),
        "step_s_means": "median CPU seconds per optimizer step (steps 2..N of every run; each run is one process "
                        "with one torch thread, so the figure is its own work, not the machine's load)",
        "cached_step_wall_s": round(median_wall("cached"), 4), "live_step_wall_s": round(median_wall("live"), 4),
        "top_k": k, "logit_dtype": args.logit_dtype,
        "bytes_per_token_payload": f"{k} ids x 2 B (uint16 for vocabularies <= 65536, else 4 B) + {k} log-probs x "
                                   f"{2 if args.logit_dtype != 'float32' else 4} B + tail 4 B + token id 4 B; the rest is shard headers",
        "cache_tokens": built["tokens"], "tail_mass_untrained_teacher": built["tail_mass"], "cache_bytes": built["bytes"], "cache_records": built["records"],
        "steps_per_run": args.steps, "repeats": args.repeats, "batch_size": preset.student_budget.batch_size,
        "per_run": runs, "preset": preset.name,
        "weights": "initial (untrained) demo teacher and student: time and memory do not depend on learnt weights",
    }


def quality(args: argparse.Namespace, preset) -> dict:
    from transformers import AutoTokenizer

    from ..demo.pipeline import evaluate_models, initial_models, prepare_data, save_initial_model, train_teacher

    work = Path(args.work)
    text = args.text
    data_dir = prepare_data(work / "data", preset, text, 0)
    init = initial_models(work / "init", data_dir, preset, text, 0)
    tokenizer = AutoTokenizer.from_pretrained(init["teacher"])
    teacher_dir, _ = train_teacher(work / "teacher", init["teacher"], data_dir, preset.teacher_budget, 0, progress=False)
    teacher_row = evaluate_models(work / "eval-teacher", {"teacher": teacher_dir}, data_dir, preset, False)["rows"][0]
    print(f"teacher: VQA {teacher_row['vqa_accuracy']:.2f}", file=sys.stderr, flush=True)
    cache_dir = work / f"cache-k{args.top_k}"
    built = build(teacher_dir, data_dir / "train.jsonl", cache_dir, args.top_k, args.logit_dtype, args.build_batch_size)
    print(f"cache: {built['bytes_per_token']:.0f} B/token, built in {built['build_s']:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for seed in args.seeds:
        student_spec = preset.text_student if text else preset.student
        student_init = save_initial_model(work / f"init-student-{seed}", student_spec, tokenizer, text, preset.image_size, 202 + seed)
        students = {}
        for variant, extra in (("live", {}), ("cached", {"teacher_cache": str(cache_dir)})):
            run = reused_or_distilled(work / f"taid-{variant}-{seed}", student_init, teacher_dir, data_dir, "taid",
                                      preset.student_budget, seed, preset.t_start, progress=False, **extra)
            students[variant] = run / "student"
        scores = evaluate_models(work / f"eval-{seed}", students, data_dir, preset, progress=False)
        for row in scores["rows"]:
            rows.append({"variant": row["model"], "seed": seed, "vqa": row["vqa_accuracy"], "cider": row["CIDEr"]})
        print(f"  seed {seed}: " + ", ".join(f"{r['model']} {r['vqa_accuracy']:.2f}" for r in scores["rows"]),
              file=sys.stderr, flush=True)
    summary = {}
    for variant in ("live", "cached"):
        vqa = [r["vqa"] for r in rows if r["variant"] == variant]
        cider = [r["cider"] for r in rows if r["variant"] == variant]
        summary[variant] = {"vqa_mean": statistics.fmean(vqa), "vqa_std": statistics.stdev(vqa) if len(vqa) > 1 else 0.0,
                            "cider_mean": statistics.fmean(cider), "cider_std": statistics.stdev(cider) if len(cider) > 1 else 0.0}
    difference = summary["cached"]["vqa_mean"] - summary["live"]["vqa_mean"]
    spread = summary["live"]["vqa_std"]
    return {"teacher_vqa": teacher_row["vqa_accuracy"], "rows": rows, "summary": summary, "seeds": list(args.seeds),
            "cached_minus_live_vqa": difference, "live_seed_std": spread,
            "within_seed_spread": abs(difference) <= spread,
            "criterion": "|mean(cached) - mean(live)| <= sample std of the live student's VQA accuracy over seeds",
            "cache": {k: built[k] for k in ("bytes_per_token", "build_s", "tokens", "records", "tail_mass")},
            "top_k": args.top_k, "logit_dtype": args.logit_dtype, "preset": preset.name, "n_train": preset.n_train,
            "text": text,
            "teacher_budget": dataclasses.asdict(preset.teacher_budget), "eval_questions": preset.eval_questions,
            "student_budget": dataclasses.asdict(preset.student_budget)}


def quality_markdown(result: dict, command: str) -> str:
    s = result["summary"]
    pair = "text-only LLM" if result.get("text") else "VLM"
    lines = [f"Command: `{command}`", "",
             f"Demo {pair} pair; teacher VQA accuracy {result['teacher_vqa']:.2f}; TAID students, seeds {result['seeds']}; "
             f"cache: top-k {result['top_k']}, {result['logit_dtype']}, {result['cache']['bytes_per_token']:.0f} B/token.", "",
             "| teacher signal | VQA accuracy (mean +- std) | CIDEr-D (mean +- std) | per-seed VQA |", "|---|---:|---:|---|"]
    for variant, label in (("live", "live teacher"), ("cached", f"k = {result['top_k']} cache")):
        per_seed = ", ".join(f"{r['vqa']:.2f}" for r in result["rows"] if r["variant"] == variant)
        lines.append(f"| {label} | {s[variant]['vqa_mean']:.2f} +- {s[variant]['vqa_std']:.2f} | "
                     f"{s[variant]['cider_mean']:.2f} +- {s[variant]['cider_std']:.2f} | {per_seed} |")
    verdict = "within" if result["within_seed_spread"] else "NOT within"
    lines += ["", f"Cached minus live: {result['cached_minus_live_vqa']:+.2f} VQA points, {verdict} the live student's "
              f"seed spread ({result['live_seed_std']:.2f})."]
    return "\n".join(lines) + "\n"


def with_budget(preset, args: argparse.Namespace):
    """The preset with the quality part's overrides (a smaller budget where CPU time is short)."""
    changes = {}
    if args.n_train:
        changes["n_train"] = args.n_train
    if args.teacher_steps:
        changes["teacher_budget"] = dataclasses.replace(preset.teacher_budget, steps=args.teacher_steps,
                                                        warmup_steps=max(1, args.teacher_steps // 20))
    if args.student_steps:
        changes["student_budget"] = dataclasses.replace(preset.student_budget, steps=args.student_steps,
                                                        warmup_steps=max(1, args.student_steps // 20))
    if args.eval_questions:
        changes["eval_questions"] = args.eval_questions
    return preset.with_overrides(**changes) if changes else preset


def main() -> None:
    from ..demo.presets import PRESETS  # light: no torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["speed"], choices=["speed", "quality"])
    parser.add_argument("--preset", default="same-data", choices=list(PRESETS),
                        help="same-data: what the committed figures used (then named default)")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--logit-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--records", type=int, default=256, help="speed: training records cached")
    parser.add_argument("--steps", type=int, default=8, help="speed: optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="speed: live/cached runs each, alternating")
    parser.add_argument("--build-batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="quality: student seeds")
    parser.add_argument("--text", action="store_true", help="quality: the demo's text-only LLM pair (scenes in words)")
    parser.add_argument("--n-train", type=int, default=None, help="quality: training scenes (default: the preset's)")
    parser.add_argument("--teacher-steps", type=int, default=None, help="quality: teacher steps (default: the preset's)")
    parser.add_argument("--student-steps", type=int, default=None, help="quality: student steps (default: the preset's)")
    parser.add_argument("--eval-questions", type=int, default=None, help="quality: VQA test questions (default: the preset's)")
    parser.add_argument("--work", default="runs/bench-cache", help="where data, models, caches and runs go")
    parser.add_argument("--out", default="docs/results", help="where the JSON (and quality table) go")
    # internal: one training run in a subprocess
    for name in ("--child", "--student", "--teacher", "--cache", "--data", "--output"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args)
        return

    preset = with_budget(PRESETS[args.preset].with_overrides(caption_backend="python"), args)
    out = Path(args.out)
    if "speed" in args.parts:
        run = Run()
        payload = run.record(speed(args, preset))
        write_result(out / "bench_cache.json", payload)
        print_json({k: v for k, v in payload.items() if k not in ("per_run", "machine")})
    if "quality" in args.parts:
        run = Run()
        result = quality(args, preset)
        write_result(out / "cache_quality.json", run.record(result, seconds=True))
        write_table(out / "cache_quality.md", quality_markdown(result, run.command))
        print(quality_markdown(result, run.command))


if __name__ == "__main__":
    main()
