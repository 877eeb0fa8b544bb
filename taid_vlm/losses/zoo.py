"""The registered losses: one class each, wrapping a per-token function of ``divergences.py``.

A class says what the loss needs (teacher, labels), which numbers it takes and their ranges,
which config settings it reads, and owns whatever changes during a run: TAID its schedule of t,
CTKD its learned temperature and the ramp of its gradient reversal.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import torch

from .base import DivergenceLoss, Loss, Param, Range
from .divergences import (CTKDTemperature, adaptive_kl, cross_entropy, ctkd_kl, decoupled_kd, forward_kl,
                          generalized_jsd, reverse_kl, skew_forward_kl, skew_reverse_kl, taid_kl, total_variation)
from .registry import register_loss
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
    params = {"beta": Param(0.5, UNIT)}


@register_loss("skew_fkl")
class SkewForwardKL(DivergenceLoss):
    function = skew_forward_kl
    params = {"skew": Param(0.1, UNIT)}


@register_loss("skew_rkl")
class SkewReverseKL(DivergenceLoss):
    function = skew_reverse_kl
    params = {"skew": Param(0.1, UNIT)}


@register_loss("akl")
class AdaptiveKL(DivergenceLoss):
    function = adaptive_kl
    params = {"mu": Param(0.5, UNIT)}


@register_loss("ctkd")
class CTKD(DivergenceLoss):
    """Forward KL at a learned temperature whose gradient is reversed (Li et al. 2023).

    The reversal strength ramps from 0 to ``ctkd_lambda_max`` with a cosine over the run; the
    temperature module is trained with the student and saved in checkpoints as
    ``ctkd_temperature.pt``.
    """

    function = ctkd_kl
    settings: ClassVar[dict[str, Range | None]] = {"ctkd_lambda_max": NON_NEGATIVE}

    def __init__(self, **params: float):
        super().__init__(**params)
        self.learned: CTKDTemperature | None = None
        self.lambda_max = 1.0
        self.last_temperature: Tensor | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], params: Mapping[str, float], total_steps: int) -> "CTKD":
        loss = super().from_settings(settings, params, total_steps)
        loss.learned = CTKDTemperature(initial=max(loss.base_temperature, 1.0) + 1e-3)
        loss.lambda_max = float(settings["ctkd_lambda_max"])
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

    def step_metrics(self, snapshot: dict[str, float]) -> dict[str, float]:
        if self.last_temperature is None:
            return dict(snapshot)
        return {**snapshot, "temperature": float(self.last_temperature.detach())}


@register_loss("dkd")
class DecoupledKD(DivergenceLoss):
    """DKD's own alpha/beta (Zhao et al. 2022): target-class and non-target-class weights."""

    function = decoupled_kd
    needs_labels = True
    params = {"alpha": Param(1.0, NON_NEGATIVE), "beta": Param(8.0, NON_NEGATIVE)}


@register_loss("taid")
class TAID(DivergenceLoss):
    """KL(p_t || q) with t moved by TAIDSchedule, once per applied optimizer step.

    Built directly (``TAID(t=0.6)``) it is the loss at a fixed t, for the functional API; built
    from a run's settings it owns the schedule, and its state is the schedule's state.
    """

    function = taid_kl
    params = {"t": Param(None, UNIT)}
    scheduled = {"t": "TAID's t comes from t_start/t_end and the schedule"}
    settings: ClassVar[dict[str, Range | None]] = {
        "t_start": UNIT, "t_end": UNIT, "taid_alpha": NON_NEGATIVE, "taid_beta": Range(0.0, 1.0, open_high=True, hint="(a momentum)"),
        "taid_adaptive": None, "taid_alpha_per_run": Range(0.0, hint="or null"),
    }

    def __init__(self, t: float | None = None, *, schedule: TAIDSchedule | None = None):
        super().__init__(t=schedule.t if schedule is not None else t)
        self.schedule = schedule

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], params: Mapping[str, float], total_steps: int) -> "TAID":
        schedule = TAIDSchedule(total_steps, t_start=settings["t_start"], t_end=settings["t_end"], alpha=settings["taid_alpha"],
                                beta=settings["taid_beta"], adaptive=settings["taid_adaptive"],
                                alpha_per_run=settings["taid_alpha_per_run"])
        loss = cls(schedule=schedule, **params)
        loss.base_temperature = float(settings.get("temperature", 1.0))
        return loss

    @classmethod
    def setting_problems(cls, settings: Mapping[str, Any]) -> list[str]:
        problems = super().setting_problems(settings)
        start, end = settings.get("t_start"), settings.get("t_end")
        if not problems and start is not None and end is not None and start > end:
            problems.append(f"t_start ({start}) must be <= t_end ({end}): TAID's t only moves toward the teacher")
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

    def snapshot(self) -> dict[str, float]:
        if self.schedule is None:
            return {"t": self.t}
        return {"t": self.schedule.t, "t_linear": self.schedule.t_linear}

    def step_metrics(self, snapshot: dict[str, float]) -> dict[str, float]:
        return {**snapshot, "t_next": self.t}

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
