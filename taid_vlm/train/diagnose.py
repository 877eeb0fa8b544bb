"""Why steps were skipped: name the likely cause instead of blaming the records by default.

A non-finite loss has a handful of usual causes, and the numbers of the failing step tell
them apart: weights that are already non-finite after applied steps point at the learning
rate; a non-finite distillation term beside a finite cross entropy points at the teacher's
outputs or the temperature; a non-finite cross entropy on the very first step points at the
student (its dtype or checkpoint). Only when none of these shows are the records suspected.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ..errors import RunError
from .config import DistillConfig


class TrainingFailed(RunError, RuntimeError):
    """The run could not apply its steps; the message names the likely cause and the fix."""


def likely_cause(config: DistillConfig, kd: float, ce: float, params: Iterable[torch.nn.Parameter],
                 applied_steps: int) -> str:
    if any(not torch.isfinite(p.detach()).all() for p in params):
        return (f"the student's weights became non-finite after {applied_steps} applied step(s): lr={config.lr} is "
                "likely too high (lower it, or raise warmup_steps)")
    loss = config.loss_class
    uses_kd = loss is not None and loss.uses_kd(config.distil_ratio)
    uses_ce = loss is None or loss.uses_ce(config.distil_ratio)
    if uses_kd and not math.isfinite(kd) and (not uses_ce or math.isfinite(ce)):
        return (f"the distillation term is non-finite while the student's own loss is finite: the teacher's outputs "
                f"(teacher_dtype={config.teacher_dtype}; try float32) or temperature={config.temperature} "
                f"(loss={config.loss}) are the likely cause")
    if uses_ce and not math.isfinite(ce) and applied_steps == 0:
        return (f"the student's own loss is non-finite from the start: check the student checkpoint and "
                f"student_dtype={config.student_dtype} (try float32)")
    return (f"the loss was non-finite on these records (lr={config.lr}, temperature={config.temperature}); check "
            "them, lower lr, or use student_dtype=float32")


def too_many_bad_steps(config: DistillConfig, bad_steps: int, step: int, record_ids: list[str], cause: str) -> TrainingFailed:
    return TrainingFailed(
        f"{bad_steps} steps had a non-finite loss (limit max_bad_steps={config.max_bad_steps}); the last at step {step} "
        f"on records {record_ids[:20]}. Likely cause: {cause}. metrics.jsonl lists every skipped step"
    )


def nothing_applied(config: DistillConfig, steps: int, cause: str) -> TrainingFailed:
    return TrainingFailed(
        f"none of the {steps} step(s) could be applied (every loss was non-finite), so no student was saved. "
        f"Likely cause: {cause}"
    )
