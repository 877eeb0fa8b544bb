"""A run whose steps are all skipped names the likely cause, not just the records."""

from __future__ import annotations

import torch

from taid_vlm.train.config import DistillConfig
from taid_vlm.train.diagnose import likely_cause

NAN = float("nan")


def config(**values) -> DistillConfig:
    return DistillConfig(student="s", teacher="t", data="d", output="o", **values)


def finite_params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3))]


def test_weights_gone_non_finite_point_at_the_learning_rate():
    params = [torch.nn.Parameter(torch.tensor([1.0, NAN]))]
    cause = likely_cause(config(lr=0.5), NAN, NAN, params, applied_steps=3)
    assert "after 3 applied step(s)" in cause and "lr=0.5" in cause


def test_non_finite_distillation_term_points_at_teacher_or_temperature():
    cause = likely_cause(config(distil_ratio=0.5, temperature=0.01, teacher_dtype="float16"), NAN, 2.0, finite_params(), 0)
    assert "teacher's outputs" in cause and "teacher_dtype=float16" in cause and "temperature=0.01" in cause
    # pure distillation (no cross entropy term): a non-finite kd alone points there too
    assert "teacher's outputs" in likely_cause(config(), NAN, 0.0, finite_params(), 0)


def test_non_finite_own_loss_from_the_start_points_at_the_student():
    cause = likely_cause(config(loss="sft", student_dtype="float16"), 0.0, NAN, finite_params(), 0)
    assert "student checkpoint" in cause and "student_dtype=float16" in cause


def test_otherwise_the_records_are_suspected():
    assert "on these records" in likely_cause(config(), 1.0, 1.0, finite_params(), 2)
