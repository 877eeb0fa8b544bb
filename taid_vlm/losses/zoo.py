"""The registered losses: one class each, wrapping a per-token function of ``divergences.py``.

A class says what the loss needs (teacher, labels), which numbers it takes and which other
settings a run gives it (each declared once, with type, default, range and help), and owns
whatever changes during a run: TAID its schedule of t, CTKD its learned temperature and the ramp
of its gradient reversal.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import torch

from .base import DivergenceLoss, Loss, Param, Range, Setting
from .divergences import (CTKDTemperature, adaptive_kl, cross_entropy, ctkd_kl, decoupled_kd, forward_kl,
                          generalized_jsd, reverse_kl, skew_forward_kl, skew_reverse_kl, taid_kl, total_variation)
from .registry import register_loss
from .schedule import SETTINGS as TAID_SETTINGS
from .schedule import TAIDSchedule
from .uld import uld_per_token

Tensor = torch.Tensor
UNIT = Range(0.0, 1.0)
NON_NEGATIVE = Range(0.0)


@register_loss("fkl")
class ForwardKL(DivergenceLoss):
    function = forward_kl

    def interpolation(self) -> float | None:
        return 1.0


@register_loss("rkl")
class ReverseKL(DivergenceLoss):
    function = reverse_kl


@register_loss("tvd")
class TotalVariation(DivergenceLoss):
    function = total_variation


@register_loss("gjsd")
class GeneralizedJSD(DivergenceLoss):
    function = generalized_jsd
    params = {"beta": Param(0.5, UNIT, help="weight of the teacher in the mixture (0: forward KL, 1: reverse KL)")}


@register_loss("skew_fkl")
class SkewForwardKL(DivergenceLoss):
    function = skew_forward_kl
    params = {"skew": Param(0.1, UNIT, help="share of the teacher mixed into the student's side")}


@register_loss("skew_rkl")
class SkewReverseKL(DivergenceLoss):
    function = skew_reverse_kl
    params = {"skew": Param(0.1, UNIT, help="share of the student mixed into the teacher's side")}


@register_loss("akl")
class AdaptiveKL(DivergenceLoss):
    function = adaptive_kl
    params = {"mu": Param(0.5, UNIT, help="teacher mass that makes the head of the distribution")}


@register_loss("ctkd")
class CTKD(DivergenceLoss):
    """Forward KL at a learned temperature whose gradient is reversed (Li et al. 2023).

    The reversal strength ramps from 0 to ``lambda_max`` with a cosine over the run; the
    temperature module is trained with the student and saved in checkpoints as
    ``ctkd_temperature.pt``.
    """

    function = ctkd_kl
    settings: ClassVar[dict[str, Setting]] = {
        "lambda_max": Setting(1.0, NON_NEGATIVE, alias="ctkd_lambda_max",
                              help="gradient-reversal strength the cosine ramp reaches at the last step"),
    }

    def __init__(self, **params: float):
        super().__init__(**params)
        self.learned: CTKDTemperature | None = None
        self.lambda_max = 1.0
        self.last_temperature: Tensor | None = None

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], *, temperature: float = 1.0, total_steps: int = 1) -> "CTKD":
        loss = super().from_settings(values, temperature=temperature, total_steps=total_steps)
        loss.learned = CTKDTemperature(initial=max(loss.base_temperature, 1.0) + 1e-3)
        loss.lambda_max = float(values["lambda_max"])
        return loss

    @classmethod
    def owns_parameters(cls) -> bool:
        return True

    def temperature(self, step: int, total_steps: int) -> float | Tensor:
        if self.learned is None:
            return self.base_temperature
        self.last_temperature = self.learned(self.lambda_max * cosine_ramp(step, total_steps))
        return self.last_temperature

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"ctkd_temperature": self.learned} if self.learned is not None else {}

    def step_metrics(self, before: dict[str, float]) -> dict[str, float]:
        if self.last_temperature is None:
            return dict(before)
        return {**before, "temperature": float(self.last_temperature.detach())}


@register_loss("dkd")
class DecoupledKD(DivergenceLoss):
    """DKD's own alpha/beta (Zhao et al. 2022): target-class and non-target-class weights."""

    function = decoupled_kd
    needs_labels = True
    params = {"alpha": Param(1.0, NON_NEGATIVE, help="weight of the target-class term (TCKD)"),
              "beta": Param(8.0, NON_NEGATIVE, help="weight of the non-target-class term (NCKD)")}


@register_loss("taid")
class TAID(DivergenceLoss):
    """KL(p_t || q) with t moved by TAIDSchedule, once per applied optimizer step.

    Built directly (``TAID(t=0.6)``) it is the loss at a fixed t, for the functional API; built
    from a run's settings it owns the schedule, and its state is the schedule's state.
    """

    function = taid_kl
    params = {"t": Param(None, UNIT, help="the interpolation between the student (0) and the teacher (1)")}
    scheduled = {"t": "TAID's t comes from t_start/t_end and the schedule"}
    settings: ClassVar[dict[str, Setting]] = TAID_SETTINGS
    on_sorted = ("TAID's interpolation of two sorted vectors is their displacement interpolant, whose distance to "
                 "the student is exactly t * ULD: it would only rescale the loss")

    def __init__(self, t: float | None = None, *, schedule: TAIDSchedule | None = None):
        super().__init__(t=schedule.t if schedule is not None else t)
        self.schedule = schedule

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], *, temperature: float = 1.0, total_steps: int = 1) -> "TAID":
        schedule = TAIDSchedule(total_steps, **{k: values[k] for k in cls.settings})
        loss = cls(schedule=schedule)
        loss.base_temperature = float(temperature)
        return loss

    @classmethod
    def setting_problems(cls, values: Mapping[str, Any], spelling: Mapping[str, str] | None = None) -> list[str]:
        problems = super().setting_problems(values, spelling)
        start, end = values.get("t_start"), values.get("t_end")
        if not problems and start is not None and end is not None and start > end:
            problems.append(f"{cls.spelled('t_start', spelling)} ({start}) must be <= {cls.spelled('t_end', spelling)} ({end}): "
                            "TAID's t only moves toward the teacher")
        return problems

    @property
    def t(self) -> float:
        return self.schedule.t if self.schedule is not None else self.values["t"]

    def per_token(self, student, teacher, *, temperature=1.0, labels=None):
        return taid_kl(student, teacher, t=self.t, temperature=temperature)

    def interpolation(self) -> float | None:
        return self.t

    def on_step(self, step: int, total_steps: int, kd_loss: float) -> None:
        if self.schedule is not None:
            self.schedule.step(kd_loss)

    def metrics(self) -> dict[str, float]:
        if self.schedule is None:
            return {"t": self.t}
        return {"t": self.schedule.t, "t_linear": self.schedule.t_linear}

    def step_metrics(self, before: dict[str, float]) -> dict[str, float]:
        return {**before, "t_next": self.t}

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict() if self.schedule is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.schedule is None:
            raise ValueError("TAID(t=...) has a fixed t and no schedule to restore; build it with TAID.from_settings")
        self.schedule.load_state_dict(state)


@register_loss("sft")
class CrossEntropy(DivergenceLoss):
    """Supervised fine-tuning: the student's own loss on the labels; no teacher is loaded."""

    function = cross_entropy
    needs_teacher = False
    needs_labels = True


@register_loss("uld")
class ULD(Loss):
    """Universal Logit Distillation (Boizard et al. 2024) over aligned tokens of a cross-tokenizer
    pair (``cross_tokenizer: uld``; the math and why TAID does not apply: ``uld.py``).

    ``ranked``: the engine compares the student's own top-k (largest first) with the teacher's
    ``Ranks``, rank by rank, instead of gathering the student at the teacher's ids. The CE term
    beside it comes from ``distil_ratio``: ``ratio * ULD + (1 - ratio) * CE`` is the paper's
    ``CE + lambda * ULD`` up to a global scale, with ``lambda = ratio / (1 - ratio)``.
    """

    ranked = True

    def per_token(self, student: Tensor, teacher: Tensor | None, *, temperature: float | Tensor = 1.0,
                  labels: Tensor | None = None) -> Tensor:
        return uld_per_token(student, teacher, temperature)


def cosine_ramp(step: int, total: int) -> float:
    """CTKD's cosine ramp of the gradient-reversal strength from 0 to 1."""
    return 0.5 * (1 - math.cos(math.pi * min(step / max(total, 1), 1.0)))


__all__ = ["Loss", "ForwardKL", "ReverseKL", "TotalVariation", "GeneralizedJSD", "SkewForwardKL", "SkewReverseKL",
           "AdaptiveKL", "DecoupledKD", "CrossEntropy", "TAID", "CTKD", "ULD", "cosine_ramp"]
