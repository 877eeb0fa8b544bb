"""Start-up of distillation on large LLaVA sets: wall time and peak memory up to the first step.

A LLaVA-format JSON array (as LLaVA ships its 665k mix) of N records, each with its own image
file, is distilled with a tiny composed pair: each measured run is a fresh process that runs the
loop's ``setup`` and its first ``step`` (what ``taid-vlm distill`` does before step 2), so the
wall time counts the interpreter, imports, models, data checks and the first step. Runs
alternate between the sizes (``--repeats`` rounds) so a changing machine load hits both alike.

Modes:
- ``table`` (the loop as it is): records read on access from an index (data/table.py),
  ``validate_images: sample`` (every image file stat'ed, 256 rows built and decoded);
- ``list`` (the comparator: the loop before, kept in this benchmark only): every record built up
  front as a Python object and every image decoded (``load_records(check_images="open")``).

Printed, last line: one JSON object {"table": {"20000": {"first_step_s": .., "peak_mb": ..},
"200000": {..}, "time_ratio": .., "memory_ratio": ..}, "list": {..}}; the whole result with
every run and the machine goes to ``--out`` (docs/results/bench_data_scale.json).

Usage: python scripts/bench_data_scale.py [--sizes 20000,200000] [--repeats 2] [--modes table,list]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .results import write_result
from .runner import REPO, Run, child_command, child_env, last_json_line, peak_rss_mb, print_json

PROMPTS = ("What is in the picture? Describe the colours and the shapes you see.",
           "Where is the red circle relative to the blue square?", "How many objects are there?")
ANSWERS = ("A red circle on the left of a blue square, and a small green triangle below them.",
           "The red circle is to the left of the blue square.", "There are three objects.")


def build(work: Path, sizes: list[int]) -> None:
    """The pair, the images (one per record) and one JSON array per size (the first N records)."""
    import numpy as np
    from PIL import Image

    from ..models.composed import build_composed_vlm

    texts = list(PROMPTS + ANSWERS)
    for name, seed, tokens in (("teacher", 1, 16), ("student", 2, 4)):
        model, processor = build_composed_vlm("tiny", texts=texts, seed=seed, num_image_tokens=tokens)
        model.save_pretrained(work / name)
        processor.save_pretrained(work / name)
    images = work / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(max(sizes)):
        if i % 20_000 == 0:
            print(f"[bench_data_scale] images {i}/{max(sizes)}", file=sys.stderr, flush=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:07d}.png")
        turns = [{"from": "human", "value": f"<image>\n{PROMPTS[i % 3]}"}, {"from": "gpt", "value": ANSWERS[i % 3]},
                 {"from": "human", "value": PROMPTS[(i + 1) % 3]}, {"from": "gpt", "value": ANSWERS[(i + 1) % 3]}]
        rows.append({"id": f"llava-{i:07d}", "image": f"images/{i:07d}.png", "conversations": turns})
    for size in sizes:
        (work / f"data-{size}.json").write_text(json.dumps(rows[:size]))
    del rows  # the measured processes are forked from this one


def worker(args: argparse.Namespace) -> None:
    started = time.time()
    from ..train import loop
    from ..train.config import load_config

    if args.mode == "list":  # the loop before data/table.py: every record built, every image decoded
        from ..data import load_records

        loop._training_records = lambda config: load_records(config.data, format="llava", check_images="open")
    work = Path(args.workdir)
    config = load_config(None, dict(student=str(work / "student"), teacher=str(work / "teacher"),
                                    data=str(work / f"data-{args.size}.json"), output=str(work / f"run-{args.mode}-{args.size}"),
                                    overwrite=True, batch_size=4, max_steps=10, save_every=1000, progress=False,
                                    lr=1e-4))
    run = loop.setup(config)
    set_up = time.time()
    loop.step(run)
    done = time.time()
    run.data.close()
    print_json({"setup_s": round(set_up - started, 2), "step_s": round(done - set_up, 2), "done_at": done,
                "peak_mb": round(peak_rss_mb(), 1), "records": len(run.data.loader.dataset)})


def measure(args: argparse.Namespace, work: Path, mode: str, size: int) -> dict[str, Any]:
    command = child_command("data_scale", ["--worker", "--mode", mode, "--size", str(size), "--workdir", str(work)])
    launched = time.time()
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {size} failed:\n{done.stderr[-3000:]}")
    result = last_json_line(done.stdout)
    result["first_step_s"] = round(result.pop("done_at") - launched, 2)  # from the process's launch
    print(f"[bench_data_scale] {mode} {size}: {result}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="table,list")
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "bench_data_scale.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    bench = Run()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_data_scale-") as tmp:  # written before the images go
        work = Path(tmp)
        build(work, sizes)
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {m: {s: [] for s in sizes} for m in modes}
        for _ in range(args.repeats):
            for mode in modes:
                for size in sizes:
                    runs[mode][size].append(measure(args, work, mode, size))
        line: dict[str, Any] = {}
        for mode in modes:
            summary: dict[str, Any] = {}
            for size in sizes:
                summary[str(size)] = {key: round(statistics.median(r[key] for r in runs[mode][size]), 2)
                                      for key in ("first_step_s", "setup_s", "step_s", "peak_mb")}
            small, large = summary[str(sizes[0])], summary[str(sizes[-1])]
            summary["time_ratio"] = round(large["first_step_s"] / small["first_step_s"], 2)
            summary["memory_ratio"] = round(large["peak_mb"] / small["peak_mb"], 2)
            line[mode] = summary
        payload = bench.record({**line, "runs": runs, "repeats": args.repeats,
                                "setting": "tiny composed pair, batch 4, LLaVA JSON array, one 32x32 PNG per record; "
                                           "medians of the repeats"})
        write_result(args.out, payload)
        print_json(line)


if __name__ == "__main__":
    main()
