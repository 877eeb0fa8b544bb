"""Pure tensor math: the loss objects and their registry, the divergence zoo, the TAID schedule
and the chunked fused-linear engines.

No model code and no I/O here, so every loss is unit-testable in milliseconds.
"""

from .api import divergence
from .base import DivergenceLoss, Loss, Param, Range
from .chunked import chunked_divergence
from .divergences import CTKDTemperature
from .registry import LOSSES, UnknownLoss, build_loss, loss_class, register_loss
from .schedule import TAIDSchedule
from .zoo import CTKD, TAID, CrossEntropy

LOSS_NAMES = tuple(LOSSES)

__all__ = ["divergence", "chunked_divergence", "TAIDSchedule", "CTKDTemperature", "LOSS_NAMES", "LOSSES", "Loss",
           "DivergenceLoss", "Param", "Range", "register_loss", "loss_class", "build_loss", "UnknownLoss", "TAID", "CTKD",
           "CrossEntropy"]
