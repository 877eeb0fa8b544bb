"""EngineOptions: how the engine computes a loss (never what it computes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .triton_chunk import CHUNK_KERNELS


@dataclass(frozen=True)
class EngineOptions:
    """How ``divergence`` runs; the defaults are what a run uses unless its config says otherwise.

    - ``chunked``: a student given as a ``Head`` goes through the chunked fused-linear engine
      (never ``[N, V]`` at once); False materialises its logits (the plain path, for comparison).
    - ``chunk_size``: tokens per chunk; None: as many as fit ``chunk_memory_mb``.
    - ``chunk_memory_mb``: budget (MiB) for a chunk's ``[chunk, V]`` buffers; None: the device's
      default (``chunked.DEFAULT_CHUNK_MEMORY_MB``).
    - ``compile``: the closed-form taid/fkl per-chunk kernel through ``torch.compile`` (falls back
      to eager, with a warning, where it cannot compile).
    - ``chunk_kernel``: which closed-form taid/fkl per-chunk kernel: ``torch`` (``fused_kl.py``,
      through ``torch.compile`` with ``compile``), ``triton`` (``triton_chunk.py``: CUDA only, an
      error elsewhere) or ``auto`` (triton on CUDA where Triton imports, else torch). The default is ``torch``:
      the Triton kernel is tested in Triton's interpreter and compiled for sm_90, not yet timed on a GPU.
    - ``closed_form``: losses that are KL(p_t || q) (taid, fkl) use their closed-form logits
      gradient; False differentiates every chunk with autograd (for checks).
    - ``ce_weight``: the student's cross entropy on the labels mixed in from the same pass,
      ``(1 - ce_weight) * KD + ce_weight * CE``; 0: none.
    - ``dtype``: the least precision of the math (softmaxes, gradients); inputs that are wider
      keep theirs (fp64 for checks). bf16/fp16 heads still run their matmuls in their dtype.
    """

    chunked: bool = True
    chunk_size: int | None = None
    chunk_memory_mb: float | None = None
    compile: bool = False
    chunk_kernel: str = "torch"
    closed_form: bool = True
    ce_weight: float = 0.0
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive number of tokens, got {self.chunk_size}")
        if self.chunk_memory_mb is not None and not self.chunk_memory_mb > 0:
            raise ValueError(f"chunk_memory_mb must be positive, got {self.chunk_memory_mb}")
        if self.chunk_kernel not in CHUNK_KERNELS:
            raise ValueError(f"chunk_kernel must be one of {', '.join(CHUNK_KERNELS)}, got {self.chunk_kernel!r}")
        if not 0.0 <= self.ce_weight <= 1.0:
            raise ValueError(f"ce_weight is the cross entropy's share of the loss, in [0, 1]; got {self.ce_weight}")
        if not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype (torch.float32, torch.float64), got {self.dtype!r}")
