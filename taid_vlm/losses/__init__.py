"""Pure tensor math: the divergence zoo, the TAID schedule and the chunked fused-linear engine.

No model code and no I/O here, so every loss is unit-testable in milliseconds.
"""

from .api import divergence
from .chunked import chunked_divergence
from .divergences import DIVERGENCES, CTKDTemperature
from .schedule import TAIDSchedule

LOSS_NAMES = tuple(DIVERGENCES)

__all__ = ["divergence", "chunked_divergence", "TAIDSchedule", "CTKDTemperature", "DIVERGENCES", "LOSS_NAMES"]
