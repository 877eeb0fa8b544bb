"""The distillation application: config -> models -> data -> loop -> checkpoints and metrics."""

from .config import ConfigError, DistillConfig, load_config
from .loop import DistillResult, distill

__all__ = ["ConfigError", "DistillConfig", "DistillResult", "distill", "load_config"]
