"""The embedded demo: synthetic data -> teacher -> sft / fkl / taid students -> evaluation -> report.

Names are resolved on first use, so ``taid_vlm.demo.shapes`` (the data generator behind
``taid-vlm data shapes``) imports without the training and evaluation stack (torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"DemoResult": ".pipeline", "run_demo": ".pipeline", "PRESETS": ".presets", "DemoPreset": ".presets",
            "TrainBudget": ".presets"}

__all__ = ["DemoPreset", "DemoResult", "PRESETS", "TrainBudget", "run_demo"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
