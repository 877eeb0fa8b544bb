"""A loss is an object that says what it needs and owns its state.

The training loop asks the object (does it need the teacher? the labels? what temperature this
step? what to log?) and never compares loss names; a new loss is one subclass plus a
``register_loss`` line (or an import path ``"module:Class"`` in the config), nothing in
``train/``. The per-chunk math stays a per-token function of logits (``divergences.py``) so the
engine (``api.py``: one door; ``chunked.py``, ``topk.py``: its paths) can run any loss on any slice of tokens.

Settings a loss reads are fields of the run's config (users name them in YAML); the class
declares which ones and their valid ranges, so config validation comes from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Range:
    """An interval a number must lie in; ``open_high`` excludes the upper end (a momentum < 1)."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    hint: str = ""

    def contains(self, value: Any) -> bool:
        if value is None or isinstance(value, bool):
            return True  # optional settings and switches have no interval
        value = float(value)
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high == math.inf:
            text = f"{'>' if self.open_low else '>='} {_num(self.low)}"
        else:
            text = f"in {'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}{')' if self.open_high else ']'}"
        return f"{text} {self.hint}".rstrip()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Param:
    """A number the per-token math takes (``loss_params.<name>`` in a config)."""

    default: float | None  # None: the caller must pass it
    range: Range = Range()


class Loss:
    """Base class of every loss: the per-token math plus what the run must provide for it."""

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True  # False: the student's own loss (sft); no teacher is loaded
    needs_labels: ClassVar[bool] = False  # the per-token math reads the target token ids
    # compares sorted probabilities (ULD): the student's own top-k against a teacher known by its
    # ranks (losses/uld.py ``Ranks``), not the student at the teacher's ids
    ranked: ClassVar[bool] = False
    params: ClassVar[dict[str, Param]] = {}  # numbers of the math; set per run with loss_params.<name>
    # params that the loss sets itself during a run (TAID's t): refused in loss_params, with why
    scheduled: ClassVar[dict[str, str]] = {}
    # config fields the loss reads (besides temperature) and their valid ranges (None: no interval)
    settings: ClassVar[dict[str, Range | None]] = {}

    def __init__(self, **params: float):
        unknown = set(params) - set(self.params)
        if unknown:
            takes = ", ".join(self.params) if self.params else "no parameters"
            raise TypeError(f"loss {self.label()!r} got unexpected parameter(s) {sorted(unknown)}; it takes {takes} (and temperature)")
        missing = [k for k, p in self.params.items() if p.default is None and params.get(k) is None]
        if missing:
            raise TypeError(f"loss {self.label()!r} needs {', '.join(f'{k}=' for k in missing)} (e.g. t from TAIDSchedule.t)")
        self.values: dict[str, float] = {k: (params[k] if params.get(k) is not None else p.default) for k, p in self.params.items()}
        for key, value in self.values.items():
            if not self.params[key].range.contains(value):
                raise ValueError(f"loss {self.label()!r}: {key} must be {self.params[key].range.describe()}, got {value}")
        self.base_temperature: float = 1.0

    # ---- building from a run's config ---------------------------------------------------------

    @classmethod
    def label(cls) -> str:
        return cls.name or f"{cls.__module__}:{cls.__qualname__}"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], params: Mapping[str, float], total_steps: int) -> "Loss":
        """The loss of one run: ``settings`` holds temperature and the fields named in ``settings``."""
        loss = cls(**params)
        loss.base_temperature = float(settings.get("temperature", 1.0))
        return loss

    @classmethod
    def setting_problems(cls, settings: Mapping[str, Any]) -> list[str]:
        """Out-of-range settings, each naming its valid range; subclasses add cross-field checks."""
        problems = []
        for key, allowed in cls.settings.items():
            if allowed is not None and key in settings and not allowed.contains(settings[key]):
                problems.append(f"{key} must be {allowed.describe()}, got {settings[key]}")
        return problems

    @classmethod
    def param_problems(cls, params: Mapping[str, float]) -> list[str]:
        """loss_params a user may set: ``params`` minus the ones the loss schedules itself."""
        accepted = [k for k in cls.params if k not in cls.scheduled]
        problems = []
        for key, value in params.items():
            if key not in accepted:
                takes = ", ".join(accepted) if accepted else "no parameters"
                extra = f" ({cls.scheduled[key]})" if key in cls.scheduled else ""
                problems.append(f"loss_params.{key} is not a parameter of loss {cls.label()!r}; it takes {takes}{extra}")
            elif not cls.params[key].range.contains(value):
                problems.append(f"loss_params.{key} of loss {cls.label()!r} must be {cls.params[key].range.describe()}, got {value}")
        return problems

    @classmethod
    def owns_parameters(cls) -> bool:
        """Whether the loss trains parameters of its own (outside the student), like CTKD."""
        return False

    # ---- what a step asks ----------------------------------------------------------------------

    @classmethod
    def uses_kd(cls, distil_ratio: float) -> bool:
        """Whether a run at this distil_ratio computes the distillation term (and needs the teacher)."""
        return cls.needs_teacher and distil_ratio > 0

    @classmethod
    def uses_ce(cls, distil_ratio: float) -> bool:
        """A teacher-free loss is the student's own term; a distillation loss adds CE below ratio 1."""
        return not cls.needs_teacher or distil_ratio < 1

    def temperature(self, step: int, total_steps: int) -> float | Tensor:
        """The temperature of this step (a tensor when it is learned)."""
        return self.base_temperature

    def per_token(self, student: Tensor, teacher: Tensor | None, *, temperature: float | Tensor = 1.0,
                  labels: Tensor | None = None) -> Tensor:
        """The loss of each of n tokens from fp32 logits ``[n, V]``: the per-chunk math."""
        raise NotImplementedError(f"{type(self).__name__} must define per_token(student, teacher, *, temperature, labels)")

    def interpolation(self) -> float | None:
        """t if this loss is KL(p_t || q) (TAID; fkl is t = 1): the engines then use its closed-form gradient."""
        return None

    def on_step(self, step: int, total_steps: int, kd_loss: float) -> None:
        """Called once per APPLIED optimizer step with the all-reduced distillation loss."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules the loss owns; trained with the student, saved as ``<name>.pt`` in checkpoints."""
        return {}

    def to(self, device: torch.device | str) -> "Loss":
        for module in self.modules().values():
            module.to(device)
        return self

    def snapshot(self) -> dict[str, float]:
        """Values at the start of a step, logged with the step and compared across ranks."""
        return {}

    def step_metrics(self, snapshot: dict[str, float]) -> dict[str, float]:
        """The metrics row's loss-specific columns once the step is done."""
        return dict(snapshot)

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state for checkpoints (JSON); tensors belong in ``modules()``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A loss without state ignores a saved one (a run resumed under another loss with
        resume_accept_changes); losses with state override this."""


class DivergenceLoss(Loss):
    """A loss whose per-token math is one function of the divergence zoo plus its ``values``."""

    function: ClassVar[Any] = None

    def per_token(self, student: Tensor, teacher: Tensor | None, *, temperature: float | Tensor = 1.0,
                  labels: Tensor | None = None) -> Tensor:
        extra = {"labels": labels} if self.needs_labels else {}
        return type(self).function(student, teacher, temperature=temperature, **self.values, **extra)
