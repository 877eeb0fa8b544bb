"""Loss names -> loss classes, and ``"module:Class"`` import paths for losses defined elsewhere."""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from .base import Loss

LOSSES: dict[str, type[Loss]] = {}

L = TypeVar("L", bound=type[Loss])


class UnknownLoss(ValueError):
    """A loss name that is not registered, or an import path that does not lead to a Loss class."""


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator: ``@register_loss("fkl")`` makes ``loss: fkl`` mean that class."""

    def add(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, Loss)):
            raise TypeError(f"register_loss({name!r}): {cls!r} is not a subclass of taid_vlm.losses.Loss")
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss {name!r} is already registered to {LOSSES[name].__qualname__}")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return add


def loss_class(spec: str) -> type[Loss]:
    """A registered name (``taid``) or an import path (``my_package.losses:MyLoss``)."""
    if not isinstance(spec, str) or not spec:
        raise UnknownLoss(f"a loss is a registered name ({', '.join(LOSSES)}) or 'module:Class', got {spec!r}")
    if spec in LOSSES:
        return LOSSES[spec]
    if ":" not in spec:
        raise UnknownLoss(f"loss {spec!r} is not one of {', '.join(LOSSES)} (or 'module:Class' for a loss "
                          "defined outside taid_vlm)")
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownLoss(f"loss {spec!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing: say where
        raise UnknownLoss(f"loss {spec!r}: importing module {module_name!r} failed with {type(e).__name__}: {e}") from None
    cls = module
    for part in attribute.split("."):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, Loss)):
        raise UnknownLoss(f"loss {spec!r}: {attribute!r} in module {module_name!r} is not a subclass of "
                          "taid_vlm.losses.Loss (define per_token and the needs_* flags on one)")
    return cls


def build_loss(spec: "str | Loss", **params: float) -> Loss:
    """A loss object from a name/import path and its parameters; an object passes through."""
    if isinstance(spec, Loss):
        if params:
            raise TypeError(f"loss object {spec.label()!r} already holds its parameters; got {sorted(params)} too")
        return spec
    return loss_class(spec)(**params)
