"""TAIDSchedule: how the interpolation parameter t moves from t_start to t_end.

Exactly the update of the TAID paper (see docs/TAID.md), with the reference code's known
weaknesses fixed by construction:
- it moves only when ``step(loss)`` is called, which the training loop does once per OPTIMIZER
  step with the training loss (never per micro-batch, never on validation);
- it holds plain Python floats (no CUDA buffers): device-agnostic, picklable, and its whole
  state goes into checkpoints through ``state_dict``;
- the loss given to ``step`` is the loop's all-reduced loss, so every rank computes the same t.

With the paper's alpha = 5e-4, sigmoid(momentum) stays near 0.5 and the adaptive push per step
is about ``alpha/2 * (1 - t)``, while the linear target climbs ``(t_end - t_start)/N`` per step:
the adaptive term only wins when ``alpha * N / 2 > 1`` (N > ~4000 steps). ``t_linear`` is exposed
so this can be logged, and ``alpha_per_run`` makes alpha scale with the run length instead.
"""

from __future__ import annotations

import math
from typing import Any

from .base import Range, Setting

_UNIT = Range(0.0, 1.0)

# TAID's settings, declared once (the TAID paper's defaults): the loss ``taid`` exposes them as its
# config section (``taid: {t_start: 0.4}``, flag ``--taid.t-start``; the flat keys of older configs
# are their aliases) and TAIDSchedule takes its defaults from here.
SETTINGS: dict[str, Setting] = {
    "t_start": Setting(0.4, _UNIT, help="t at the first step (a larger capacity gap: smaller t_start)", alias="t_start"),
    "t_end": Setting(1.0, _UNIT, help="t at the last step (1: forward KL to the teacher)", alias="t_end"),
    "alpha": Setting(5e-4, Range(0.0), help="step size of the adaptive update", alias="taid_alpha"),
    "beta": Setting(0.99, Range(0.0, 1.0, open_high=True, hint="(a momentum)"),
                    help="momentum of the loss improvement the adaptive update follows", alias="taid_beta"),
    "adaptive": Setting(True, type=bool, help="move t faster while the loss improves (false: the linear schedule)",
                        alias="taid_adaptive"),
    "alpha_per_run": Setting(None, Range(0.0, hint="or null"), alias="taid_alpha_per_run",
                             help="alpha = this / max_steps, so that short runs adapt too (null: alpha as given)"),
}


class TAIDSchedule:
    def __init__(
        self,
        total_steps: int,
        t_start: float = SETTINGS["t_start"].default,
        t_end: float = SETTINGS["t_end"].default,
        alpha: float = SETTINGS["alpha"].default,
        beta: float = SETTINGS["beta"].default,
        adaptive: bool = SETTINGS["adaptive"].default,
        eps: float = 1e-15,
        alpha_per_run: float | None = SETTINGS["alpha_per_run"].default,
    ):
        if total_steps < 1:
            raise ValueError(f"TAIDSchedule: total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= t_start <= t_end <= 1.0:
            raise ValueError(f"TAIDSchedule: need 0 <= t_start <= t_end <= 1, got t_start={t_start}, t_end={t_end}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"TAIDSchedule: beta (momentum) must lie in [0, 1), got {beta}")
        self.total_steps = int(total_steps)
        self.t_start, self.t_end = float(t_start), float(t_end)
        # alpha_per_run: the total adaptive budget over the run, so that short runs adapt too.
        self.alpha = float(alpha_per_run) / self.total_steps if alpha_per_run is not None else float(alpha)
        if self.alpha < 0:
            raise ValueError(f"TAIDSchedule: alpha must be >= 0, got {self.alpha}")
        self.beta = float(beta)
        self.adaptive = bool(adaptive)
        self.eps = float(eps)
        self.t = self.t_start
        self.momentum = 0.0
        self.prev_loss: float | None = None
        self.steps_taken = 0

    @property
    def t_linear(self) -> float:
        """The linear schedule's value at the current step (the floor t never drops below)."""
        progress = min(self.steps_taken, self.total_steps) / self.total_steps
        return self.t_start + (self.t_end - self.t_start) * progress

    def step(self, loss: float) -> float:
        """Advance one optimizer step given the loss measured at the current t; returns the new t."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"TAIDSchedule.step: loss must be finite, got {loss} (skip the step instead)")
        self.steps_taken += 1
        proposal = self.t
        if self.adaptive and self.prev_loss is not None:
            improvement = (self.prev_loss - loss) / (self.prev_loss + self.eps)
            self.momentum = self.beta * self.momentum + (1.0 - self.beta) * improvement
            proposal = self.t + self.alpha * _sigmoid(self.momentum) * (1.0 - self.t)
        self.prev_loss = loss
        self.t = min(self.t_end, max(self.t_linear, proposal, self.t))
        return self.t

    def state_dict(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "alpha": self.alpha,
            "beta": self.beta,
            "adaptive": self.adaptive,
            "eps": self.eps,
            "t": self.t,
            "momentum": self.momentum,
            "prev_loss": self.prev_loss,
            "steps_taken": self.steps_taken,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("total_steps", "t_start", "t_end", "alpha", "beta", "adaptive", "eps", "t", "momentum", "prev_loss", "steps_taken"):
            if key not in state:
                raise KeyError(f"TAIDSchedule.load_state_dict: missing {key!r}; was this saved by TAIDSchedule.state_dict()?")
            setattr(self, key, state[key])

    def __repr__(self) -> str:
        return (
            f"TAIDSchedule(step={self.steps_taken}/{self.total_steps}, t={self.t:.4f}, "
            f"t_linear={self.t_linear:.4f}, adaptive={self.adaptive})"
        )


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
