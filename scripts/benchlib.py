"""What every benchmark script shares: memory readings, the machine description, JSON output.

Benchmarks run each variant in its own subprocess so that a peak belongs to one variant, and
record the load average beside their timings: these machines are shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path
from typing import Any


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


def sync(device) -> None:
    """Wait for a GPU's queued work (timings read the host clock); a no-op on CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_baseline(device) -> float:
    """Start a peak-memory window: CUDA's allocator peak is reset; returns the MB held now
    (allocated on CUDA, resident on CPU). ``peak_since`` closes it."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return current_rss_mb()


def peak_since(device, baseline_mb: float) -> float:
    """Peak MB above ``baseline_mb`` since ``peak_baseline``: CUDA max_memory_allocated, else max RSS."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20 - baseline_mb
    return max_rss_mb() - baseline_mb


def distribution_version(distribution: str) -> str | None:
    """An installed distribution's version (``liger-kernel``), None where it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    from taid_vlm.files import write_text_atomically

    write_text_atomically(path, json.dumps(payload, indent=1) + "\n")
