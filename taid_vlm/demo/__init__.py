"""The embedded demo: synthetic data -> teacher -> sft / fkl / taid students -> evaluation -> report."""

from .pipeline import DemoResult, run_demo
from .presets import PRESETS, DemoPreset, TrainBudget

__all__ = ["DemoPreset", "DemoResult", "PRESETS", "TrainBudget", "run_demo"]
