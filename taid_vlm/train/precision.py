"""Mixed precision: autocast over fp32 master weights, with a loss scaler for fp16.

The student's parameters and AdamW moments stay fp32 (what the optimizer updates); only the
forward and backward matmuls run in bf16/fp16 under autocast. This is the usual recipe
(torch.amp, accelerate's ``mixed_precision``) and what makes a long run stable where a pure
bf16 student (``student_dtype: bfloat16``) loses small updates to rounding. fp16's narrow
range needs a dynamic loss scale; bf16 has fp32's range and needs none.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast for forward passes, scaled backward, unscale-before-clip, scaler-aware steps."""

    def __init__(self, mode: str, device: torch.device):
        if mode not in ("no", *AUTOCAST_DTYPES):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {mode!r}")
        self.mode = mode
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES.get(self.mode)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.mode == "no":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.mode])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients back to their true size (before clipping or reading their norm)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the update; False when fp16 found inf/nan gradients and skipped it."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def checkpoint_modules(self) -> dict[str, Any]:
        """What must survive a resume (the fp16 loss scale and its growth tracker)."""
        return {"grad_scaler": self.scaler} if self.scaler is not None else {}
