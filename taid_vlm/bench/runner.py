"""The one runner every benchmark shares: what was asked (the command), where it ran (the machine,
with its load average at start and end, since these machines are shared and noisy), how long it
took, and how a variant runs in a process of its own so that a peak belongs to one variant.

A child process is ``python -m taid_vlm.bench.NAME ...`` and prints ONE JSON object as its last
line of standard output; ``run_child`` returns that object.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) that holds taid_vlm
DEFAULT_PACKAGES = ("torch", "transformers")


# ---- the machine and the run --------------------------------------------------------------------


def machine(load_at_start: tuple[float, ...] | None = None, packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """CPU, core count, Python, the load average (at start when given, and now), package versions,
    torch threads and the GPU."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version()}
    if load_at_start is not None:
        info["load_average_1_5_15min_at_start"] = [round(x, 2) for x in load_at_start]
    info["load_average_1_5_15min_at_end"] = [round(x, 2) for x in os.getloadavg()]
    for name in packages:
        info[name] = importlib.import_module(name).__version__
    import torch

    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it again: ``python scripts/bench_loss.py --tokens 1024``."""
    return " ".join(["python", *(sys.argv if argv is None else argv)])


@dataclass
class Run:
    """One benchmark invocation, started when created: ``record(payload)`` adds the command, the
    machine (load at start and at the time of writing) and, when asked, the seconds so far."""

    packages: tuple[str, ...] = DEFAULT_PACKAGES
    command: str = field(default_factory=command_line)
    load_at_start: tuple[float, ...] = field(default_factory=os.getloadavg)
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def machine(self) -> dict[str, Any]:
        return machine(self.load_at_start, self.packages)

    def record(self, payload: dict[str, Any], seconds: bool = False) -> dict[str, Any]:
        extra = {"seconds": self.seconds} if seconds else {}
        return {**payload, "command": payload.get("command", self.command), "machine": self.machine(), **extra}


# ---- variants in processes of their own ---------------------------------------------------------


def child_env(*paths: str, **extra: str) -> dict[str, str]:
    """The environment of a child: offline, and importing the same taid_vlm as this process (the
    repo first, then ``paths``, then what the caller had on PYTHONPATH: a GPU machine's carried packages, say)."""
    path = [str(REPO), *paths, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            **extra}


def child_command(module: str, argv: list[str], launcher: list[str] | None = None) -> list[str]:
    """``python [launcher] -m taid_vlm.bench.MODULE argv`` (a launcher such as torch.distributed.run)."""
    if launcher:
        return [sys.executable, "-m", *launcher, "-m", f"taid_vlm.bench.{module}", *argv]
    return [sys.executable, "-m", f"taid_vlm.bench.{module}", *argv]


def side_in_process(module: str, side: str, argv: list[str], required: bool) -> dict[str, Any]:
    """One side of a comparison (``python -m taid_vlm.bench.MODULE --side SIDE argv``) in its own
    process: ``{"ran": True, **its JSON}``; a side that cannot run here (a library or a GPU
    missing) is ``{"ran": False, "error": its last error line}``, a ``required`` one ends the benchmark."""
    done = subprocess.run(child_command(module, ["--side", side, *argv]), env=child_env(), capture_output=True, text=True)
    if done.returncode != 0:
        if required:
            sys.exit(f"{side} side failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"ran": False, "error": lines[-1] if lines else f"exit {done.returncode}", "exit_code": done.returncode}
    return {"ran": True, **last_json_line(done.stdout)}


def run_sides(module: str, sides: list[str], argv: list[str], required: tuple[str, ...],
              describe: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
    """Every side in its own process, one after another (``side_in_process``), a line each as it
    ends: ``describe(result)``, or why it could not run here."""
    results = {}
    for side in sides:
        results[side] = r = side_in_process(module, side, argv, required=side in required)
        print(f"{side:34s} {describe(r) if r['ran'] else 'could not run here: ' + r['error']}", flush=True)
    return results


def run_child(module: str, argv: list[str], label: str, env: dict[str, str] | None = None,
              timeout: float | None = None) -> dict[str, Any]:
    """Run a child to completion and return the JSON object its last line printed; a failure ends
    the benchmark with the child's error output."""
    done = subprocess.run(child_command(module, argv), env=env or child_env(), capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"{label} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return last_json_line(done.stdout)


def last_json_line(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def print_json(value: Any) -> None:
    """A child's (or a benchmark's) one result line."""
    print(json.dumps(value), flush=True)


# ---- memory ------------------------------------------------------------------------------------


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: ``5 > /proc/self/clear_refs``), so the peak
    read after a run is the run's own, not the import-time high-water mark."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The peak RSS since the last ``reset_peak_rss`` (or since the process started)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return max_rss_mb()


def sync(device: Any) -> None:
    """Wait for a GPU's queued work (timings read the host clock); a no-op on CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_baseline(device: Any) -> float:
    """Start a peak-memory window: CUDA's allocator peak is reset; returns the MB held now
    (allocated on CUDA, resident on CPU). ``peak_since`` closes it."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return current_rss_mb()


def peak_since(device: Any, baseline_mb: float) -> float:
    """Peak MB above ``baseline_mb`` since ``peak_baseline``: CUDA max_memory_allocated, else max RSS."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20 - baseline_mb
    return max_rss_mb() - baseline_mb


def timed_peak(device: Any, work: Callable[[], Any]) -> tuple[float, float]:
    """Run ``work()`` once: (seconds, peak MB above what was held before): the CUDA allocator's
    peak, or the growth of the process's max RSS on CPU."""
    base = peak_baseline(device)
    start = time.perf_counter()
    work()
    sync(device)
    seconds = time.perf_counter() - start
    return seconds, peak_since(device, base)


def timed_steps(step: Callable[[bool], Any], device: Any, repeats: int) -> dict[str, Any]:
    """A warm-up ``step(True)`` (its result, ``first``, is what sides compare; it also allocates
    AdamW's state, which every side pays), then ``repeats`` timed ``step(False)``, the best kept.
    Wall time and this process's CPU time per step (all its threads: on a shared machine the CPU
    time is the work done, the wall time also the waiting); peak memory from just before the
    warm-up (``peak_baseline`` / ``peak_since``)."""
    sync(device)
    base = peak_baseline(device)
    first = step(True)
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(False)
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"first": first, "step_s": round(min(wall), 4), "all_step_s": [round(t, 4) for t in wall],
            "cpu_s": round(min(cpu), 4), "all_cpu_s": [round(t, 4) for t in cpu],
            "peak_mb": round(peak_since(device, base), 1)}


def distribution_version(distribution: str) -> str | None:
    """An installed distribution's version (``liger-kernel``), None where it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


class PeakSampler:
    """Peak memory over a window: CUDA's allocator peak, or the resident set sampled every 2 ms on CPU."""

    def __init__(self, device: str):
        self.device, self.peak, self.start, self._stop = device, 0.0, 0.0, threading.Event()

    def __enter__(self) -> "PeakSampler":
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
        else:
            self.peak = self.start = current_rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss_mb())
