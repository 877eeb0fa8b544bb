"""What every benchmark script shares: memory readings, the machine description, JSON output.

Benchmarks run each variant in its own subprocess so that a peak belongs to one variant, and
record the load average beside their timings: these machines are shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine(load_at_start: tuple[float, ...] | None = None, packages: tuple[str, ...] = ("torch", "transformers")) -> dict[str, Any]:
    import importlib

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


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    from taid_vlm.files import write_text_atomically

    write_text_atomically(path, json.dumps(payload, indent=1) + "\n")


def timed_steps(step: Callable[[bool], Any], device: Any, repeats: int) -> dict[str, Any]:
    """A warm-up ``step(True)`` (its result is what sides compare), then ``repeats`` timed
    ``step(False)``. Wall time and this process's CPU time per step (all its threads: on a shared
    machine the CPU time is the work done, the wall time also the waiting); peak memory: CPU
    max-RSS growth over the resident size before the warm-up, CUDA max_memory_allocated growth."""
    import torch

    cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss_mb()
    first = step(True)
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(False)
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else max_rss_mb() - base
    return {"first": first, "step_s": round(min(wall), 4), "all_step_s": [round(t, 4) for t in wall],
            "cpu_s": round(min(cpu), 4), "all_cpu_s": [round(t, 4) for t in cpu], "peak_mb": round(peak, 1)}
