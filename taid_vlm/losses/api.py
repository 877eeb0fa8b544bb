"""``divergence(name, ...)``: every loss of the zoo behind one call on full logits."""

from __future__ import annotations

import torch

from .divergences import DIVERGENCES
from .vocab import shared_vocab_size

Tensor = torch.Tensor

# TAID's t has no default on purpose: it comes from TAIDSchedule, and a silent constant would
# turn TAID into a fixed-interpolation KD without anyone noticing.
DEFAULT_PARAMS: dict[str, float] = {"beta": 0.5, "skew": 0.1, "mu": 0.5}
# dkd reuses the names alpha/beta with its own defaults (Zhao et al. 2022).
DKD_DEFAULTS: dict[str, float] = {"alpha": 1.0, "beta": 8.0}


def resolve_params(name: str, params: dict) -> tuple:
    """Look up a divergence and check its parameters; errors name the loss and what it takes."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(DIVERGENCES)}")
    fn, needs_labels, accepted = DIVERGENCES[name]
    unknown = set(params) - set(accepted)
    if unknown:
        takes = ", ".join(accepted) if accepted else "no parameters"
        raise TypeError(f"loss {name!r} got unexpected parameter(s) {sorted(unknown)}; it takes {takes} (and temperature)")
    defaults = DKD_DEFAULTS if name == "dkd" else DEFAULT_PARAMS
    missing = [k for k in accepted if k not in params and k not in defaults]
    if missing:
        raise TypeError(f"loss {name!r} needs {', '.join(f'{k}=' for k in missing)} (e.g. t from TAIDSchedule.t)")
    resolved = {k: params.get(k, defaults.get(k)) for k in accepted}
    return fn, needs_labels, resolved


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
    name: str,
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
    fn, needs_labels, resolved = resolve_params(name, params)
    lead = student_logits.shape[:-1]
    if needs_labels and labels is None:
        raise ValueError(f"loss {name!r} needs labels= (the target token ids, shape {tuple(lead)})")
    if name != "sft":
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
    if teacher_logits is not None and name != "sft":
        teacher = upcast(teacher_logits.reshape(-1, teacher_logits.shape[-1])[selected].detach())
        vocab = shared_vocab_size(student.shape[-1], teacher.shape[-1])
        student, teacher = student[:, :vocab], teacher[:, :vocab]
    kwargs = dict(resolved, temperature=temperature)
    if needs_labels:
        kwargs["labels"] = labels.reshape(-1)[selected].to(student.device)
    per_token = fn(student, teacher, **kwargs)
    return reduce_tokens(per_token, num_tokens, student.shape[0])
