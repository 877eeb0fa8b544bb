"""Atomic, complete, resumable checkpoints.

A checkpoint is written into a hidden temporary directory next to its final place and renamed
into place only once every file (weights, optimizer, LR scheduler, RNG states of every rank, data
position, the loss's state (TAID's schedule), its modules (CTKD's temperature), config) is on disk and synced. A crash at any moment
leaves either the previous checkpoints or the new one, never half of one. ``latest_checkpoint``
ignores temporary directories, so a run killed mid-save resumes from the last complete one.
A write that fails (a full disk) removes its temporary directory and says which folder is full;
a checkpoint that cannot be read back (truncated weights, optimizer or state) is named, and
``load_newest_intact`` falls back to the previous one, saying so.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..errors import RunError, is_disk_full

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


class CorruptCheckpoint(RunError):
    """A checkpoint file that cannot be read back; the message names the file."""


@dataclass
class TrainerState:
    """Everything about the run's progress that is not a tensor."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # records of the current epoch's permutation already consumed (all ranks)
    bad_steps: int = 0
    tokens_seen: int = 0
    loss_state: dict[str, Any] | None = None  # the loss object's state_dict() (TAID: its schedule)
    schedule: dict[str, Any] | None = None  # where checkpoints before loss objects kept TAID's schedule (read only)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss_state is None and self.schedule is not None:  # an older checkpoint: same dict, old key
            self.loss_state, self.schedule = self.schedule, None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: TrainerState,
    extra_modules: dict[str, torch.nn.Module] | None = None,
    config_yaml: str,
    rank: int = 0,
    world_size: int = 1,
    barrier: Any = None,
    keep: int = 2,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path | None:
    """Write ``run_dir/checkpoints/step-N`` atomically; every rank calls this (collective).

    ``model_state`` / ``optimizer_state``: full states gathered by the caller when the model is
    sharded (FSDP); the files are then the same as an unsharded run's.
    """
    barrier = barrier or (lambda: None)
    root = run_dir / CHECKPOINT_DIR
    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-step-{state.step:07d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
        barrier()
        if rank == 0:
            _write_files(tmp, model, optimizer, lr_scheduler, state, extra_modules, config_yaml, world_size,
                         model_state, optimizer_state)
    except BaseException as e:  # a full disk, Ctrl-C: never leave half a checkpoint behind
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise RunError(
                f"no space left on the device of {root} while writing the step-{state.step} checkpoint; the "
                f"partial checkpoint was removed and {len(list_checkpoints(run_dir))} complete one(s) remain. "
                "Free space there (or lower keep_checkpoints) and continue with --resume"
            ) from e
        raise
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, keep)
    barrier()
    return final if rank == 0 else None


def _write_files(tmp: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                 state: TrainerState, extra_modules: dict[str, torch.nn.Module] | None, config_yaml: str,
                 world_size: int, model_state: dict[str, torch.Tensor] | None = None,
                 optimizer_state: dict[str, Any] | None = None) -> None:
    if model_state is not None:
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
    else:
        save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    for name, module in (extra_modules or {}).items():
        torch.save(module.state_dict(), tmp / f"{name}.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    payload = dict(state.__dict__, world_size=world_size)
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1, default=_jsonable))
    _fsync_dir(tmp)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value
    raise TypeError(f"not JSON serialisable: {value!r}")


def _prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories never count)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    extra_modules: dict[str, torch.nn.Module] | None = None,
    rank: int = 0,
    world_size: int = 1,
    load_state: Any = None,
) -> TrainerState:
    """``load_state(model_state, optimizer_state) -> (missing, unexpected)`` replaces the plain
    loading of model and optimizer when the model is sharded (every rank calls it)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise RunError(f"{path} is not a complete checkpoint (no {STATE_FILE}); pass a checkpoints/step-N directory")
    payload = _read(path / STATE_FILE, lambda f: json.loads(f.read_text()))
    if not isinstance(payload, dict):
        raise CorruptCheckpoint(f"checkpoint file {path / STATE_FILE} is damaged (not a JSON object)")
    saved_world = payload.pop("world_size", 1)
    if saved_world != world_size:
        raise RunError(
            f"checkpoint {path} was written by {saved_world} process(es) but this run has {world_size}; "
            "resume with the same number of processes so the data order and RNG streams continue exactly"
        )
    if load_state is not None:
        optimizer_state = _read(path / "optimizer.pt", _torch_load)
        missing, unexpected = load_state(_read(path / "model.safetensors", lambda f: load_file(str(f))), optimizer_state)
    else:
        missing, unexpected = _read(path / "model.safetensors", lambda f: load_model(model, str(f), strict=False))
    if missing or unexpected:
        raise RunError(
            f"checkpoint {path} does not fit this student (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); resume with the student the run started with"
        )
    if load_state is None:
        optimizer.load_state_dict(_read(path / "optimizer.pt", _torch_load))
    lr_scheduler.load_state_dict(_read(path / "lr_scheduler.pt", _torch_load))
    for name, module in (extra_modules or {}).items():
        module.load_state_dict(_read(path / f"{name}.pt", _torch_load))
    set_rng_state(_read(path / f"rng_rank{rank}.pt", _torch_load))
    try:
        return TrainerState(**payload)
    except TypeError as e:
        raise CorruptCheckpoint(f"checkpoint file {path / STATE_FILE} is damaged ({e})") from None


def load_newest_intact(candidates: list[Path], **kwargs: Any) -> tuple[Path, TrainerState]:
    """Load the first checkpoint of ``candidates`` (newest first) that reads back whole.

    Every later load rewrites everything an earlier failed one may have touched (weights,
    optimizer, scheduler, RNG), so falling back is exact. Each skipped checkpoint is named in a
    warning; when none is intact the error lists them all.
    """
    failures = []
    for path in candidates:
        try:
            state = load_checkpoint(path, **kwargs)
        except CorruptCheckpoint as e:
            failures.append(str(e))
            continue
        if failures:
            warnings.warn(f"resuming from {path} instead: {'; '.join(failures)}", stacklevel=2)
        return path, state
    if len(candidates) == 1:
        raise CorruptCheckpoint(f"{failures[0]}; resume from another checkpoints/step-N folder, --resume alone for "
                                "the newest intact one, or start over with --overwrite")
    raise CorruptCheckpoint(f"no intact checkpoint to resume from: {'; '.join(failures)}. Start over with --overwrite")


def _torch_load(path: Path) -> Any:
    return torch.load(path, weights_only=False)


def _read(path: Path, reader: Any) -> Any:
    """Run ``reader(path)``; any failure to read the file becomes a CorruptCheckpoint naming it."""
    if not path.is_file():
        raise CorruptCheckpoint(f"checkpoint file {path} is missing")
    try:
        return reader(path)
    except RunError:
        raise
    except Exception as e:  # noqa: BLE001 - torch, safetensors, pickle and json each raise their own types
        raise CorruptCheckpoint(f"checkpoint file {path} is damaged ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]})") from None
