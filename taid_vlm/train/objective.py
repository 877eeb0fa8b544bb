"""The training objective on response tokens: distillation loss, optionally mixed with CE.

``total = distil_ratio * divergence + (1 - distil_ratio) * cross_entropy``; a teacher-free loss
(sft) is the student's own term alone. What a loss needs is asked of the loss object
(``losses/base.py``); which engine path runs is the engine's business (``losses.divergence``,
from the typed signals ``ResponseOutputs.signal()`` hands over). When both terms are needed
they come from ONE call (on the chunked path one head matmul per chunk, one head gradient).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..losses import CrossEntropy, EngineOptions, Loss, build_loss, divergence
from ..models.outputs import ResponseOutputs


@dataclass
class LossParts:
    total: torch.Tensor
    kd: torch.Tensor | None
    ce: torch.Tensor | None


def training_loss(
    loss: str | Loss,
    student: ResponseOutputs,
    teacher: ResponseOutputs | None,
    *,
    num_tokens: float | torch.Tensor,
    distil_ratio: float = 1.0,
    options: EngineOptions = EngineOptions(),
    temperature: float | torch.Tensor = 1.0,
    params: dict[str, float] | None = None,
) -> LossParts:
    """The step's objective for one micro-batch (labels are the response token ids); ``params``
    only with a loss given by name."""
    loss = build_loss(loss, **(params or {}))
    common = dict(labels=student.token_ids, num_tokens=num_tokens, temperature=temperature)
    if not loss.needs_teacher:
        own = divergence(loss, student.signal(), None, options=options, **common)
        return LossParts(total=own, kd=None, ce=own)
    uses_kd, uses_ce = loss.uses_kd(distil_ratio), loss.uses_ce(distil_ratio)
    if not uses_kd:
        ce = divergence(CrossEntropy(), student.signal(), None, options=options, **common)
        return LossParts(total=ce, kd=None, ce=ce)
    mixed = dataclasses.replace(options, ce_weight=1.0 - distil_ratio if uses_ce else 0.0)
    terms = divergence(loss, student.signal(), teacher.signal(), options=mixed, return_terms=True, **common)
    if not uses_ce:
        return LossParts(total=terms.total, kd=terms.total, ce=None)
    return LossParts(total=terms.total, kd=terms.kd, ce=terms.ce)
