"""Everything the project measures on a CUDA GPU, in one command under ten minutes (``gpu_check.sh``).

Parts, in order (each its own subprocess group with its own time limit; one that fails or runs
out of time is recorded with the tail of its output, and the next one starts):

  fused_liger_shape   scripts/bench_fused.py: the loss alone at Liger's published shape (H 4,096,
                      V 128,256, 8,192 tokens, bf16): ours with the torch and the Triton chunk
                      kernel beside Liger's fused-linear JSD and TRL's chunked divergence (beta 0:
                      forward KL), time, peak memory, and each side's error against fp64
  loss_readme_shape   scripts/bench_loss.py at the README's shape (2,048 tokens, H 1,024,
                      V 151,936), fp32 and bf16, both chunk kernels, with the plain path and the
                      four-GEMM floor
  distill_fsdp        one real ``taid-vlm distill`` run of two optimizer steps under torchrun with
                      one rank: a Qwen2-VL pair at Qwen2-VL-2B widths (bench_scale's), bf16 autocast,
                      activation checkpointing and ``distributed: fsdp`` (FSDP2 over one rank)
  loss_liger_shape    scripts/bench_loss.py at Liger's shape, fp32 and bf16
  scale               scripts/bench_scale.py: fp32 / bf16 / bf16 + checkpointing, 151,936-row head
                      (the pair of distill_fsdp, reused)
  vs_trl              scripts/bench_vs_trl.py: one step of ours against TRL's trainers

Every part writes its JSON under ``--out-dir`` (docs/results/gpu/); ``gpu_check.json`` there
names the GPU and lists each part's status, time and limit. ``--copy-to DIR`` also packs the
folder and the logs into DIR/gpu_results.tar.gz (a lent machine returns files from one folder).

Without CUDA (``torch.cuda.is_available()`` false, or no torch) the command checks its own
arguments, prints one line and exits 0, writing nothing. ``--dry-run`` prints the plan.
``--prepare`` (on a machine that reaches PyPI) downloads the wheels the parts need beyond
torch/transformers/accelerate into ``.wheels/`` (see WHEELS); on the GPU machine they are
installed with ``pip --no-index --target`` into ``--site`` and put on PYTHONPATH after the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import runner
from .results import write_result
from .runner import REPO

ROOT = REPO
# Wheels the parts need that a CUDA image with torch, transformers, accelerate, numpy, pandas and
# pyarrow may lack: Liger and TRL (benchmark-only, pyproject's `bench` extra) and datasets, which
# TRL imports (with its two dependencies that such images lack). Pure Python, ~2.5 MB together.
WHEELS = ("trl==1.16.0", "liger-kernel==0.8.5", "datasets==4.7.0", "dill==0.4.0", "multiprocess==0.70.18")
LIGER_SHAPE = ["--tokens", "8192", "--hidden", "4096", "--vocab", "128256"]
DEFAULT_BUDGET_S = 570  # the device tool's command limit is 600 s: room for the install and the packing


@dataclass
class Part:
    name: str
    limit_s: int
    argv: list[str]
    outputs: list[str] = field(default_factory=list)  # files under --out-dir that the part writes


def plan(args: argparse.Namespace) -> list[Part]:
    py, out = sys.executable, Path(args.out_dir)
    pair = str(Path(args.work_dir) / "pair")
    parts = [
        Part("fused_liger_shape", 100, [py, "scripts/bench_fused.py", "--device", "cuda", *LIGER_SHAPE,
                                        "--dtype", "bfloat16", "--out", str(out / "fused_liger_shape.json")],
             ["fused_liger_shape.json"]),
        Part("loss_readme_shape", 80, [py, "scripts/bench_loss.py", "--device", "cuda", "--dtypes", "float32", "bfloat16",
                                       "--chunk-kernels", "torch", "triton", "--out", str(out / "loss_readme_shape.json")],
             ["loss_readme_shape.json"]),
        Part("distill_fsdp", 110, [py, "-m", "taid_vlm.bench.gpu_check", "--distill-part", "--pair-dir", pair, "--work-dir", args.work_dir,
                                  "--out", str(out / "distill_fsdp.json")], ["distill_fsdp.json"]),
        Part("loss_liger_shape", 90, [py, "scripts/bench_loss.py", "--device", "cuda", *LIGER_SHAPE,
                                       "--dtypes", "float32", "bfloat16", "--out", str(out / "loss_liger_shape.json")],
             ["loss_liger_shape.json"]),
        Part("scale", 100, [py, "scripts/bench_scale.py", "--device", "cuda", "--modes", "fp32,bf16,bf16_ckpt",
                            "--steps", "2", "--pair-dir", pair, "--out", str(out / "scale.json")], ["scale.json"]),
        Part("vs_trl", 70, [py, "scripts/bench_vs_trl.py", "--device", "cuda", "--out", str(out / "vs_trl.json")],
             ["vs_trl.json"]),
    ]
    if args.parts:
        known = [p.name for p in parts]
        unknown = [name for name in args.parts if name not in known]
        if unknown:
            print(f"gpu_check: error: --parts {' '.join(unknown)}: no such part; the parts are {', '.join(known)}", file=sys.stderr)
            raise SystemExit(2)
        parts = [p for p in parts if p.name in args.parts]
    return parts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", metavar="PART", help="run only these parts (default: all, in order)")
    parser.add_argument("--budget-s", type=int, default=DEFAULT_BUDGET_S, help="wall-clock seconds for all parts together")
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results" / "gpu"), help="where the JSON goes")
    parser.add_argument("--work-dir", default="/tmp/taid-gpu-check", help="models, logs and runs (not kept)")
    parser.add_argument("--site", default="/tmp/taid-gpu-site", help="where the carried wheels are installed")
    parser.add_argument("--wheels", default=str(ROOT / ".wheels"), help="the wheels --prepare downloads and a GPU run installs")
    parser.add_argument("--copy-to", metavar="DIR", help="also pack the results and logs into DIR/gpu_results.tar.gz")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--prepare", action="store_true", help="download WHEELS into --wheels (needs PyPI) and exit")
    parser.add_argument("--distill-part", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pair-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_s < 60:
        parser.error(f"--budget-s {args.budget_s}: give the parts at least 60 seconds")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        parser.error(f"--out-dir {args.out_dir} is a file, not a folder")
    if args.copy_to and Path(args.copy_to).exists() and not Path(args.copy_to).is_dir():
        parser.error(f"--copy-to {args.copy_to} is a file, not a folder")
    return args


PROBE = """
import json, os, platform
try:
    import torch
except Exception:
    print("null"); raise SystemExit
if not torch.cuda.is_available():
    print("null"); raise SystemExit
record = {"gpu": torch.cuda.get_device_name(0), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
          "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
          "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
          "cpu_count": os.cpu_count()}
for name in ("triton", "transformers", "accelerate", "trl", "liger_kernel"):
    try:
        record[name] = __import__(name).__version__
    except Exception:
        record[name] = None
print(json.dumps(record))
"""


def probe(env: dict[str, str] | None = None) -> dict | None:
    """The GPU and the versions, asked in a subprocess (this process never holds a CUDA context);
    None where torch is missing or sees no CUDA device."""
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if done.returncode == 0 and lines else None


# ---- preparing and installing the wheels ----------------------------------------------------------


def prepare(wheels: Path) -> None:
    """Download WHEELS for the GPU machine's Python (3.12, x86-64 Linux) into ``wheels``; idempotent."""
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "-d", str(wheels), *WHEELS]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise SystemExit(f"gpu_check: error: pip download failed: {lines[-1] if lines else done.returncode}")
    files = sorted(wheels.glob("*.whl"))
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"gpu_check: {len(files)} wheels ({size:.1f} MiB) in {wheels}; carry that folder to the GPU machine")


def install(wheels: Path, site: Path) -> list[str]:
    """Install the carried wheels into ``site`` (no index, no dependencies); skipped when done already."""
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        return []
    stamp = site / ".installed"
    names = [f.name for f in files]
    if stamp.exists() and stamp.read_text().split() == names:
        return names
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, files)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"gpu_check: installing the wheels failed (the parts that need them will fail): {done.stderr[-500:]}", flush=True)
        return []
    stamp.write_text("\n".join(names))
    return names


# ---- running the parts ----------------------------------------------------------------------------


def child_env(site: Path) -> dict[str, str]:
    """The parts' environment: the repo first, then the carried wheels (when installed), then the caller's path."""
    return runner.child_env(*([str(site)] if site.is_dir() else []), PYTHONUNBUFFERED="1", TRANSFORMERS_OFFLINE="1",
                            HF_DATASETS_OFFLINE="1")


def run_part(part: Part, limit_s: float, env: dict[str, str], log: Path) -> dict:
    """Run one part in its own process group; kill the whole group when it outlives ``limit_s``."""
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(part.argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, status = proc.returncode, "timeout"
    lines = log.read_text(errors="replace").splitlines()
    return {"name": part.name, "status": status, "exit_code": rc, "seconds": round(time.time() - started, 1),
            "limit_s": round(limit_s), "command": " ".join(part.argv), "outputs": part.outputs,
            "output_tail": lines[-40:] if status != "ok" else lines[-6:]}


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_all(args: argparse.Namespace, parts: list[Part], machine: dict) -> int:
    out_dir, work = Path(args.out_dir), Path(args.work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    installed = install(Path(args.wheels), Path(args.site))
    env = child_env(Path(args.site))
    machine = probe(env) or machine  # again with the carried packages on the path: their versions
    summary = {"gpu": machine["gpu"], "machine": machine, "budget_s": args.budget_s, "wheels_installed": installed,
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": []}
    deadline = time.time() + args.budget_s
    for part in parts:
        left = deadline - time.time()
        if left < 20:
            record = {"name": part.name, "status": "skipped", "reason": f"{left:.0f} s of the budget left", "limit_s": part.limit_s}
        else:
            print(f"gpu_check: {part.name} (at most {min(part.limit_s, left):.0f} s) ...", flush=True)
            record = run_part(part, min(part.limit_s, left), env, work / "logs" / f"{part.name}.log")
        summary["parts"].append(record)
        print(f"gpu_check: {part.name}: {record['status']}" + (f" in {record['seconds']} s" if "seconds" in record else ""), flush=True)
        write_summary(out_dir, summary)  # after every part: a kill later keeps what ran
    if args.copy_to:
        pack(out_dir, work / "logs", Path(args.copy_to))
    failed = [p["name"] for p in summary["parts"] if p["status"] != "ok"]
    print(f"gpu_check: {len(parts) - len(failed)} of {len(parts)} parts ran" + (f"; not: {', '.join(failed)}" if failed else ""))
    return 0


def write_summary(out_dir: Path, summary: dict) -> None:
    write_result(out_dir / "gpu_check.json", summary)


def pack(out_dir: Path, logs: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / "gpu_results.tar.gz", "w:gz") as tar:
        tar.add(out_dir, arcname="gpu")
        tar.add(logs, arcname="logs")
    if (out_dir / "gpu_check.json").exists():
        (dest / "gpu_check.json").write_text((out_dir / "gpu_check.json").read_text())


# ---- the distill part ---------------------------------------------------------------------------


def distill_part(args: argparse.Namespace) -> None:
    """Two optimizer steps of ``taid-vlm distill`` under torchrun (one rank): bf16, checkpointing, fsdp."""
    from .scale import cuda_pair_args, ensure_pair

    pair, run_dir = Path(args.pair_dir), Path(args.work_dir) / "distill-fsdp"
    started = time.time()
    model = ensure_pair(pair, cuda_pair_args())
    built_s = time.time() - started
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "taid_vlm.cli",
           "distill", f"--student={pair / 'student'}", f"--teacher={pair / 'teacher'}", f"--data={pair / 'data.jsonl'}",
           f"--output={run_dir}", "--overwrite", "--max-steps=2", "--log-every=1", "--save-every=100000", "--no-progress",
           "--batch-size=4", "--mixed-precision=bf16", "--gradient-checkpointing", "--distributed=fsdp",
           "--teacher-dtype=bfloat16", "lr=1e-5"]
    started = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - started
    metrics_file = run_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
    record = {"command": " ".join(cmd), "exit_code": done.returncode, "wall_s_including_load_and_save": round(seconds, 1),
              "pair_build_s": round(built_s, 1), "model": model, "metrics": metrics,
              "stderr_tail": done.stderr.splitlines()[-30:]}
    record["machine"] = runner.machine()
    write_result(args.out, record)
    print(json.dumps({k: record[k] for k in ("exit_code", "wall_s_including_load_and_save")}))
    if done.returncode != 0:
        sys.exit(f"distill failed (exit {done.returncode}): {done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.distill_part:
        distill_part(args)
        return 0
    if args.prepare:
        prepare(Path(args.wheels))
        return 0
    parts = plan(args)
    if args.dry_run:
        for part in parts:
            print(f"{part.name:18s} <= {part.limit_s:3d} s  {' '.join(part.argv)}")
        print(f"budget {args.budget_s} s; results in {args.out_dir}; wheels from {args.wheels} into {args.site}")
        return 0
    machine = probe()
    if machine is None:
        print(f"gpu_check: no CUDA device here ({sys.executable} has no torch.cuda): nothing measured, nothing written")
        return 0
    return run_all(args, parts, machine)


if __name__ == "__main__":
    sys.exit(main())
