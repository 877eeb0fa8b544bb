"""The training objective on response tokens: distillation loss, optionally mixed with CE.

``total = distil_ratio * divergence + (1 - distil_ratio) * cross_entropy``; ``sft`` is cross
entropy alone. Both go through the chunked engine when the adapters hand over hidden states
(the default) and through full logits otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import chunked_divergence, divergence
from ..losses.topk import topk_divergence
from ..losses.topk_chunked import chunked_topk_divergence
from ..models.outputs import ResponseOutputs


@dataclass
class LossParts:
    total: torch.Tensor
    kd: torch.Tensor | None
    ce: torch.Tensor | None


def response_divergence(
    name: str,
    student: ResponseOutputs,
    teacher: ResponseOutputs | None,
    *,
    num_tokens: float | torch.Tensor,
    chunked: bool = True,
    chunk_size: int | None = None,
    chunk_memory_mb: float | None = None,
    chunk_compile: bool = False,
    temperature: float | torch.Tensor = 1.0,
    **params: float,
) -> torch.Tensor:
    """One divergence over aligned response tokens (labels are the response token ids)."""
    labels = student.token_ids
    if teacher is not None and teacher.topk is not None and name != "sft":  # a cached teacher: top-k + tail
        common = dict(labels=labels, num_tokens=num_tokens, temperature=temperature, **params)
        if chunked and student.hidden is not None:
            return chunked_topk_divergence(name, student.hidden, student.head_weight, teacher.topk,
                                           student_bias=student.head_bias, chunk_size=chunk_size, **common)
        return topk_divergence(name, student.full_logits(), teacher.topk, **common)
    if chunked and student.hidden is not None:
        teacher_kwargs = {}
        if teacher is not None:
            if teacher.hidden is not None:
                teacher_kwargs = dict(teacher_hidden=teacher.hidden, teacher_weight=teacher.head_weight, teacher_bias=teacher.head_bias)
            else:
                teacher_kwargs = dict(teacher_logits=teacher.logits)
        return chunked_divergence(
            name, student.hidden, student.head_weight, student_bias=student.head_bias, labels=labels,
            num_tokens=num_tokens, temperature=temperature, chunk_size=chunk_size, chunk_memory_mb=chunk_memory_mb,
            compile=chunk_compile, **teacher_kwargs, **params,
        )
    teacher_logits = teacher.full_logits() if teacher is not None else None
    return divergence(name, student.full_logits(), teacher_logits, labels=labels, num_tokens=num_tokens,
                      temperature=temperature, **params)


def training_loss(
    loss: str,
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
    common = dict(num_tokens=num_tokens, chunked=chunked, chunk_size=chunk_size, chunk_memory_mb=chunk_memory_mb,
                  chunk_compile=chunk_compile)
    kd = ce = None
    if loss != "sft" and distil_ratio > 0:
        kd = response_divergence(loss, student, teacher, temperature=temperature, **common, **(params or {}))
    if loss == "sft" or distil_ratio < 1:
        ce = response_divergence("sft", student, None, **common)
    if loss == "sft":
        return LossParts(total=ce, kd=None, ce=ce)
    total = kd if ce is None else (kd * distil_ratio if kd is not None else 0) + ce * (1 - distil_ratio)
    return LossParts(total=total, kd=kd, ce=ce)
