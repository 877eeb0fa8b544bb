"""A loss is an object that says what it needs and owns its state.

The training loop asks the object (does it need the teacher? the labels? what temperature this
step? what to log?) and never compares loss names; a new loss is one subclass plus a
``register_loss`` line (or an import path ``"module:Class"`` in the config), nothing in
``train/``. The per-chunk math stays a per-token function of logits (``divergences.py``) so the
engine (``api.py``: one door; ``chunked.py``, ``topk.py``: its paths) can run any loss on any slice of tokens.

A loss declares its settings once (``Setting``: type, default, range, help, the flat alias of
older configs): the config's validation, its recipe keys (``taid: {t_start: 0.4}``), the
``--taid.t-start`` flags and the resume check all come from the declaration (train/config.py).
"""

from __future__ import annotations

import math
import re
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
class Setting:
    """One setting of a loss, declared once: config validation, the recipe key ``<section>.<name>``
    (YAML: ``<section>: {<name>: value}``), the flag ``--<section>.<name>`` and the resume check
    all come from it.

    ``default`` None means "null is allowed" (or, with ``required``, that the caller must pass a
    value: TAID's t, which its schedule sets). ``alias`` is the flat config key that sets it too
    (``t_start`` for ``taid.t_start``): the keys of configs written before settings nested.
    """

    default: Any = None
    range: Range | None = None
    type: type = float  # float, int, bool or str
    help: str = ""
    alias: str | None = None
    required: bool = False

    def problem(self, name: str, value: Any) -> str | None:
        """Why ``value`` is out of range (``name`` as the user spelled the key), or None."""
        if self.range is None or self.range.contains(value):
            return None
        return f"{name} must be {self.range.describe()}, got {value}"


def Param(default: float | None, range: Range = Range(), help: str = "", alias: str | None = None) -> Setting:
    """A number of the per-token math (``build_loss("gjsd", beta=0.3)``; in a run ``gjsd.beta``, alias
    ``loss_params.beta``); ``default`` None: the caller must pass it."""
    return Setting(default, range, float, help, alias, required=default is None)


def snake_case(name: str) -> str:
    """``ScaledForwardKL`` -> ``scaled_forward_kl``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class Loss:
    """Base class of every loss: the per-token math plus what the run must provide for it."""

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True  # False: the student's own loss (sft); no teacher is loaded
    needs_labels: ClassVar[bool] = False  # the per-token math reads the target token ids
    # compares sorted probabilities (ULD): the student's own top-k against a teacher known by its
    # ranks (losses/uld.py ``Ranks``), not the student at the teacher's ids
    ranked: ClassVar[bool] = False
    # why this loss over two sorted probability vectors would add nothing to ULD (a config error says it)
    on_sorted: ClassVar[str] = ""
    params: ClassVar[dict[str, Setting]] = {}  # numbers of the per-token math (keywords of the functional API)
    # params that the loss sets itself during a run (TAID's t): refused in a config, with why
    scheduled: ClassVar[dict[str, str]] = {}
    # what else a run configures (TAID's schedule, CTKD's ramp): read by ``from_settings``
    settings: ClassVar[dict[str, Setting]] = {}

    def __init__(self, **params: float):
        unknown = set(params) - set(self.params)
        if unknown:
            takes = ", ".join(self.params) if self.params else "no parameters"
            raise TypeError(f"loss {self.label()!r} got unexpected parameter(s) {sorted(unknown)}; it takes {takes} (and temperature)")
        missing = [k for k, p in self.params.items() if p.required and params.get(k) is None]
        if missing:
            raise TypeError(f"loss {self.label()!r} needs {', '.join(f'{k}=' for k in missing)} (e.g. t from TAIDSchedule.t)")
        self.values: dict[str, float] = {k: (params[k] if params.get(k) is not None else p.default) for k, p in self.params.items()}
        for key, value in self.values.items():
            problem = self.params[key].problem(key, value)
            if problem:
                raise ValueError(f"loss {self.label()!r}: {problem}")
        self.base_temperature: float = 1.0

    # ---- building from a run's config ---------------------------------------------------------

    @classmethod
    def label(cls) -> str:
        return cls.name or f"{cls.__module__}:{cls.__qualname__}"

    @classmethod
    def section(cls) -> str:
        """The config section of its settings: the registered name, else the class name in snake_case."""
        return cls.name or snake_case(cls.__name__)

    @classmethod
    def declared(cls) -> dict[str, Setting]:
        """Every setting a run may give: the params it does not schedule itself, then ``settings``."""
        return {**{k: p for k, p in cls.params.items() if k not in cls.scheduled}, **cls.settings}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {key: setting.default for key, setting in cls.declared().items()}

    @classmethod
    def from_settings(cls, values: Mapping[str, Any], *, temperature: float = 1.0, total_steps: int = 1) -> "Loss":
        """The loss of one run from its resolved settings (``defaults()`` updated with the config's)."""
        loss = cls(**{k: v for k, v in values.items() if k in cls.params})
        loss.base_temperature = float(temperature)
        return loss

    @classmethod
    def setting_problems(cls, values: Mapping[str, Any], spelling: Mapping[str, str] | None = None) -> list[str]:
        """Out-of-range settings, each naming its valid range; subclasses add cross-field checks.
        ``spelling``: how the user wrote each key (``t_start``, ``taid.t_start``, ``loss_params.beta``)."""
        problems = []
        for key, setting in cls.declared().items():
            if key in values:
                problem = setting.problem(cls.spelled(key, spelling), values[key])
                if problem:
                    problems.append(problem.replace(" must be ", f" of loss {cls.label()!r} must be ", 1))
        return problems

    @classmethod
    def spelled(cls, key: str, spelling: Mapping[str, str] | None = None) -> str:
        return (spelling or {}).get(key, f"{cls.section()}.{key}")

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

    def metrics(self) -> dict[str, float]:
        """Its values now (TAID: t, t_linear): read at the start of each step, shown in the progress
        bar, logged with the step, compared across ranks at the end and in ``DistillResult``."""
        return {}

    def step_metrics(self, before: dict[str, float]) -> dict[str, float]:
        """The metrics row's loss-specific columns once the step is done (``before``: ``metrics()``
        at its start)."""
        return dict(before)

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
