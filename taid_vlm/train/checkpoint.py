"""Atomic, complete, resumable checkpoints.

A checkpoint is written into a hidden temporary directory next to its final place and renamed
into place only once every file (weights, optimizer, LR scheduler, RNG states of every rank, data
position, TAID schedule, CTKD temperature, config) is on disk and synced. A crash at any moment
leaves either the previous checkpoints or the new one, never half of one. ``latest_checkpoint``
ignores temporary directories, so a run killed mid-save resumes from the last complete one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Everything about the run's progress that is not a tensor."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # records of the current epoch's permutation already consumed (all ranks)
    bad_steps: int = 0
    tokens_seen: int = 0
    schedule: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    barrier()
    if rank == 0:
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
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, keep)
    barrier()
    return final if rank == 0 else None


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
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE}); pass a checkpoints/step-N directory")
    payload = json.loads((path / STATE_FILE).read_text())
    saved_world = payload.pop("world_size", 1)
    if saved_world != world_size:
        raise ValueError(
            f"checkpoint {path} was written by {saved_world} process(es) but this run has {world_size}; "
            "resume with the same number of processes so the data order and RNG streams continue exactly"
        )
    if load_state is not None:
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=False)
        missing, unexpected = load_state(load_file(str(path / "model.safetensors")), optimizer_state)
    else:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this student (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); resume with the student the run started with"
        )
    if load_state is None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=False))
    for name, module in (extra_modules or {}).items():
        module.load_state_dict(torch.load(path / f"{name}.pt", weights_only=False))
    set_rng_state(torch.load(path / f"rng_rank{rank}.pt", weights_only=False))
    return TrainerState(**payload)
