"""Small tensor helpers every engine path shares: upcasting, token reduction, softcapping."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def upcast(tensor: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Math in at least ``dtype`` (fp32): bf16/fp16 are widened, fp64 (gradchecks) is kept."""
    return tensor.to(torch.promote_types(tensor.dtype, dtype))


def reduce_tokens(per_token: Tensor, num_tokens: float | Tensor | None, num_selected: int) -> Tensor:
    """Sum over the selected tokens / the denominator; an empty selection gives 0, never NaN.

    ``num_tokens`` overrides the denominator: under gradient accumulation or DDP it is the
    number of response tokens in the whole optimizer step, so micro-batches of different
    lengths are weighted per token, not per micro-batch.
    """
    denominator = num_selected if num_tokens is None else num_tokens
    if isinstance(denominator, Tensor):
        denominator = denominator.to(per_token.dtype).clamp_min(1)
    else:
        denominator = max(float(denominator), 1.0)
    return per_token.sum() / denominator


def softcap(logits: Tensor, cap: float | None) -> Tensor:
    """Final-logit softcapping (Gemma 2): ``cap * tanh(z / cap)``; differentiable; None: unchanged."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


def softcap_(logits: Tensor, cap: float, derivative: Tensor | None = None) -> Tensor:
    """``softcap`` in place; ``derivative`` (same shape) receives d capped / d z = 1 - tanh^2."""
    logits.div_(cap).tanh_()
    if derivative is not None:
        torch.mul(logits, logits, out=derivative).neg_().add_(1.0)
    return logits.mul_(cap)


def check_softcap(cap: float | None, what: str) -> None:
    if cap is not None and not (isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0):
        raise ValueError(f"{what} softcap must be a positive number (Gemma 2 uses 30.0) or None, got {cap!r}")
