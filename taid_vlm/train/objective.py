"""The training objective on response tokens: distillation loss, optionally mixed with CE.

``total = distil_ratio * divergence + (1 - distil_ratio) * cross_entropy``; a teacher-free loss
(sft) is the student's own term alone. What a loss needs is asked of the loss object
(``losses/base.py``). On the chunked path (live or cached teacher) both terms come from ONE pass
of the engine (one head matmul per chunk, one head gradient); the plain path makes one call per
term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import CrossEntropy, Loss, build_loss, chunked_divergence, divergence
from ..losses.topk import topk_divergence
from ..losses.topk_chunked import chunked_topk_divergence
from ..models.outputs import ResponseOutputs


@dataclass
class LossParts:
    total: torch.Tensor
    kd: torch.Tensor | None
    ce: torch.Tensor | None


def response_divergence(
    loss: str | Loss,
    student: ResponseOutputs,
    teacher: ResponseOutputs | None,
    *,
    num_tokens: float | torch.Tensor,
    chunked: bool = True,
    chunk_size: int | None = None,
    chunk_memory_mb: float | None = None,
    chunk_compile: bool = False,
    temperature: float | torch.Tensor = 1.0,
    ce_weight: float = 0.0,
    **params: float,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One loss over aligned response tokens (labels are the response token ids).

    ``ce_weight`` > 0 (chunked path only) mixes in cross entropy in the same pass and returns
    ``(total, kd, ce)``.
    """
    loss = build_loss(loss, **params)
    labels = student.token_ids
    fused = dict(ce_weight=ce_weight, return_terms=True) if ce_weight else {}
    if teacher is not None and teacher.topk is not None and loss.needs_teacher:  # a cached teacher: top-k + tail
        common = dict(labels=labels, num_tokens=num_tokens, temperature=temperature)
        if chunked and student.hidden is not None:
            return chunked_topk_divergence(loss, student.hidden, student.head_weight, teacher.topk,
                                           student_bias=student.head_bias, chunk_size=chunk_size, **common, **fused)
        return topk_divergence(loss, student.full_logits(), teacher.topk, **common)
    if chunked and student.hidden is not None:
        teacher_kwargs = {}
        if teacher is not None:
            if teacher.hidden is not None:
                teacher_kwargs = dict(teacher_hidden=teacher.hidden, teacher_weight=teacher.head_weight, teacher_bias=teacher.head_bias)
            else:
                teacher_kwargs = dict(teacher_logits=teacher.logits)
        return chunked_divergence(
            loss, student.hidden, student.head_weight, student_bias=student.head_bias, labels=labels,
            num_tokens=num_tokens, temperature=temperature, chunk_size=chunk_size, chunk_memory_mb=chunk_memory_mb,
            compile=chunk_compile, **teacher_kwargs, **fused,
        )
    teacher_logits = teacher.full_logits() if teacher is not None else None
    return divergence(loss, student.full_logits(), teacher_logits, labels=labels, num_tokens=num_tokens,
                      temperature=temperature)


def training_loss(
    loss: str | Loss,
    student: ResponseOutputs,
    teacher: ResponseOutputs | None,
    *,
    num_tokens: float | torch.Tensor,
    distil_ratio: float = 1.0,
    chunked: bool = True,
    chunk_size: int | None = None,
    chunk_memory_mb: float | None = None,
    chunk_compile: bool = False,
    temperature: float | torch.Tensor = 1.0,
    params: dict[str, float] | None = None,
) -> LossParts:
    """The step's objective for one micro-batch; ``params`` only with a loss given by name."""
    loss = build_loss(loss, **(params or {}))
    common = dict(num_tokens=num_tokens, chunked=chunked, chunk_size=chunk_size, chunk_memory_mb=chunk_memory_mb,
                  chunk_compile=chunk_compile)
    if not loss.needs_teacher:
        own = response_divergence(loss, student, None, temperature=temperature, **common)
        return LossParts(total=own, kd=None, ce=own)
    uses_kd, uses_ce = loss.uses_kd(distil_ratio), loss.uses_ce(distil_ratio)
    one_pass = chunked and student.hidden is not None and teacher is not None
    if uses_kd and uses_ce and one_pass:
        total, kd, ce = response_divergence(loss, student, teacher, temperature=temperature, ce_weight=1.0 - distil_ratio,
                                            **common)
        return LossParts(total=total, kd=kd, ce=ce)
    kd = response_divergence(loss, student, teacher, temperature=temperature, **common) if uses_kd else None
    ce = response_divergence(CrossEntropy(), student, None, **common) if uses_ce else None
    total = kd if ce is None else (kd * distil_ratio if kd is not None else 0) + ce * (1 - distil_ratio)
    return LossParts(total=total, kd=kd, ce=ce)
