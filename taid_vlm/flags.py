"""Command-line flags made from a config dataclass, so each setting is declared once: as a field.

A field's type and default give the flag; what a type cannot say (help, choices, a flag name
other than ``--field-name``, aliases, ``append``, an optional value) goes in the field's
metadata through ``flag(...)``. Two commands use it: ``distill`` (``DistillConfig``) and ``eval``
(``EvalConfig``). Light: no torch, so ``taid-vlm --help`` stays instant.

Two ways to read a flag, one per kind of config:

- ``layered=False`` (eval): the flag is the whole story. argparse converts ints and floats and
  fills the field's default.
- ``layered=True`` (distill): flags are one layer between a YAML recipe and ``key=value``
  overrides. Every flag defaults to ``None`` (= "not given", the recipe's value stands) and keeps
  its text, which the config coerces with the same rules and messages as YAML and overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any

_FLAG_KEY = "taid_vlm.flag"
_ARGPARSE_OPTIONS = ("help", "choices", "metavar", "nargs", "const", "action", "required", "type")


def flag(*names: str, cli: bool = True, **argparse_options: Any) -> dict[str, Any]:
    """Field metadata for a setting's flag: ``field(default=8, metadata=flag(help="..."))``.

    ``names``: the flag's spellings (default ``--field-name``); ``cli=False``: no flag (the setting
    is set in a recipe or an override, e.g. a mapping); the rest goes to ``add_argument``
    (``help``, ``choices``, ``metavar``, ``nargs``, ``const``, ``action``, ``required``, ``type``).
    """
    unknown = set(argparse_options) - set(_ARGPARSE_OPTIONS)
    if unknown:
        raise TypeError(f"flag() got unsupported option(s) {sorted(unknown)}; use {', '.join(_ARGPARSE_OPTIONS)}")
    return {_FLAG_KEY: {"names": names, "cli": cli, **argparse_options}}


def flag_fields(config_class: type) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that are flags, in declaration order. A mapping is never
    one flag (``loss_params.beta=0.3`` overrides set its keys) unless its metadata says so."""
    return [f for f in dataclasses.fields(config_class)
            if _spec(f).get("cli", typing.get_origin(_annotation(config_class, f)) is not dict)]


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_class: type, *, layered: bool) -> None:
    """One ``add_argument`` per field of ``config_class``; each flag's ``dest`` is the field name."""
    for f in flag_fields(config_class):
        spec = dict(_spec(f))
        names = spec.pop("names", ()) or ("--" + f.name.replace("_", "-"),)
        spec.pop("cli", None)
        add_typed_argument(parser, names, f.name, _annotation(config_class, f), layered=layered, default=_default(f),
                           **spec)


def add_config_command(subparsers: argparse._SubParsersAction, name: str, config_class: type, run: Any, *,
                       help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose flags are ``config_class``'s fields and whose handler is ``run(args)``."""
    parser = subparsers.add_parser(name, help=help, description=description)
    add_dataclass_arguments(parser, config_class, layered=False)
    parser.set_defaults(func=run)
    return parser


def add_typed_argument(parser: Any, names: tuple[str, ...], dest: str, kind: Any, *, layered: bool,
                       default: Any = None, **spec: Any) -> None:
    """One flag of a setting of type ``kind`` (``int | None``, ``bool``, ...): a switch is
    ``--x/--no-x`` (layered) or store_true/false; in a layered config every flag defaults to None
    ("not given") and keeps its text, which the config converts with its own rules."""
    options: dict[str, Any] = {"dest": dest}
    if layered:
        options["default"] = None
        if _base(kind) is bool and "action" not in spec:
            options["action"] = argparse.BooleanOptionalAction
        elif "metavar" not in spec and "action" not in spec:
            options["metavar"] = dest.rsplit(".", 1)[-1].upper()
    else:
        options["default"] = default
        if _base(kind) is bool and "action" not in spec:
            options["action"] = "store_false" if options["default"] else "store_true"
        elif _base(kind) in (int, float) and "action" not in spec:
            options["type"] = _base(kind)
    options.update(spec)
    if options.get("required"):
        options.pop("default", None)
    parser.add_argument(*names, **options)


def values_from(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The parsed value of every flag field of ``config_class`` (``None`` where a layered flag was not given)."""
    return {f.name: getattr(args, f.name) for f in flag_fields(config_class) if hasattr(args, f.name)}


def _spec(f: dataclasses.Field) -> dict[str, Any]:
    return f.metadata.get(_FLAG_KEY, {})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _annotation(config_class: type, f: dataclasses.Field) -> Any:
    """The field's type; an annotation only a type checker can resolve (an import kept out of
    the CLI's way) reads as text, which is what a flag holds anyway."""
    if not isinstance(f.type, str):
        return f.type
    namespace = vars(sys.modules[config_class.__module__])
    try:
        return eval(f.type, dict(namespace))  # noqa: S307 - our own annotation, as typing.get_type_hints does
    except NameError:
        return str


def _base(kind: Any) -> Any:
    """``int | None`` -> ``int``; other unions and generics come back unchanged."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind
