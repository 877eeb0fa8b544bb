"""Pure tensor math: the loss objects and their registry, the divergence zoo, the TAID schedule
and the one engine door, ``divergence``, with its typed inputs (the teacher's signal: ``Head``,
``Logits``, ``TopK``; the student: its logits or its ``Head``) and ``EngineOptions``.

No model code and no I/O here, so every loss is unit-testable in milliseconds.
"""

from .api import LossTerms, divergence
from .base import DivergenceLoss, Loss, Param, Range, Setting
from .divergences import CTKDTemperature
from .options import EngineOptions
from .registry import LOSSES, UnknownLoss, build_loss, loss_class, register_loss
from .schedule import TAIDSchedule
from .signals import BucketSignal, FullSignal, Head, Logits, TeacherSignal, TopK
from .topk import topk_of_logits
from .uld import Ranks
from .zoo import CTKD, TAID, ULD, CrossEntropy

# The token-by-token losses (any teacher signal); a ranked loss (uld) reads a ``Ranks`` teacher only.
LOSS_NAMES = tuple(name for name, cls in LOSSES.items() if not cls.ranked)

__all__ = ["divergence", "EngineOptions", "LossTerms", "TeacherSignal", "FullSignal", "BucketSignal", "Head", "Logits",
           "TopK", "topk_of_logits", "TAIDSchedule", "CTKDTemperature", "LOSS_NAMES", "LOSSES", "Loss", "DivergenceLoss",
           "Param", "Range", "Setting", "register_loss", "loss_class", "build_loss", "UnknownLoss", "TAID", "CTKD", "CrossEntropy",
           "ULD", "Ranks"]
