"""``divergence(loss, ...)``: every loss of the zoo behind one call on full logits.

``loss`` is a loss object (``zoo.py``, or any ``Loss`` subclass) or a registered name with its
parameters as keywords (``divergence("gjsd", s, t, beta=0.3)``). TAID's t has no default on
purpose: it comes from TAIDSchedule, and a silent constant would turn TAID into a
fixed-interpolation KD without anyone noticing.
"""

from __future__ import annotations

import torch

from .base import Loss
from .registry import build_loss
from .vocab import shared_vocab_size

Tensor = torch.Tensor


def upcast(tensor: Tensor) -> Tensor:
    """Math in at least fp32: bf16/fp16 are widened, fp64 (gradchecks) is kept."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


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


def divergence(
    loss: str | Loss,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    mask: Tensor | None = None,
    *,
    num_tokens: float | Tensor | None = None,
    temperature: float | Tensor = 1.0,
    labels: Tensor | None = None,
    **params: float,
) -> Tensor:
    """Mean divergence over the masked tokens of ``[..., V]`` logits (math in fp32).

    Only masked rows are computed, so padding and prompt positions cost nothing and any
    garbage in them cannot leak NaN into the result.
    """
    loss = build_loss(loss, **params)
    name = loss.label()
    lead = student_logits.shape[:-1]
    if loss.needs_labels and labels is None:
        raise ValueError(f"loss {name!r} needs labels= (the target token ids, shape {tuple(lead)})")
    if loss.needs_teacher:
        if teacher_logits is None:
            raise ValueError(f"loss {name!r} needs teacher_logits")
        if teacher_logits.shape[:-1] != lead:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(student_logits.shape)} differ before the vocabulary axis")
    if mask is None:
        mask = torch.ones(lead, dtype=torch.bool, device=student_logits.device)
    if mask.shape != lead:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the logits' leading shape {tuple(lead)}")
    selected = mask.reshape(-1).bool()
    student = upcast(student_logits.reshape(-1, student_logits.shape[-1])[selected])
    teacher = None
    if teacher_logits is not None and loss.needs_teacher:
        teacher = upcast(teacher_logits.reshape(-1, teacher_logits.shape[-1])[selected].detach())
        vocab = shared_vocab_size(student.shape[-1], teacher.shape[-1])
        student, teacher = student[:, :vocab], teacher[:, :vocab]
    chosen_labels = labels.reshape(-1)[selected].to(student.device) if loss.needs_labels else None
    per_token = loss.per_token(student, teacher, temperature=temperature, labels=chosen_labels)
    return reduce_tokens(per_token, num_tokens, student.shape[0])
