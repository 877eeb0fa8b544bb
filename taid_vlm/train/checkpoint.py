"""Atomic, complete, resumable checkpoints, sharded with torch.distributed.checkpoint (DCP).

A checkpoint ``checkpoints/step-N`` holds:
- ``state/``: the student's weights and the AdamW state (and the loss's own modules) written by
  DCP: every rank writes its own shard file (``__<rank>_0.distcp``) in parallel, rank 0 the
  ``.metadata`` index. A sharded (fsdp) student is never gathered for a checkpoint; a replicated
  (ddp) one is written once, its tensors spread over the ranks;
- ``lr_scheduler.pt``, the loss's modules and the fp16 loss scale (``<name>.pt``), the RNG states
  of every rank (``rng_rank<r>.pt``), ``trainer_state.json`` (step, data position, the loss's
  state such as TAID's schedule, the world size) and ``config.yaml``.

Everything is written into a hidden temporary directory next to its final place and renamed
into place only once every file is on disk and synced (DCP syncs its own files). A crash at any
moment leaves either the previous checkpoints or the new one, never half of one.
``latest_checkpoint`` ignores temporary directories, so a run killed mid-save resumes from the
last complete one. A write that fails (a full disk) removes its temporary directory and says
which folder is full; a checkpoint that cannot be read back (a truncated shard, optimizer or
state file) is named, and ``load_newest_intact`` falls back to the previous one, saying so.

What a resume restores: on the same number of processes, everything (weights, optimizer, LR
schedule, loss state, data position, every rank's RNG): the run continues bit for bit. On another
number of processes (``resume_accept_changes``), DCP reshards weights and optimizer state
exactly, and step, LR schedule, loss state (TAID's t) and the data position (records consumed of
the epoch's permutation) continue; the RNG streams start afresh from the seed and the step, and
the batches after the position are cut for the new world size, so the run is no longer the one
the old world size would have trained. Checkpoints written before DCP (``model.safetensors`` +
``optimizer.pt``) still resume.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..errors import RunError, is_disk_full

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
SHARDED_DIR = "state"  # the DCP folder inside a checkpoint
LEGACY_WEIGHTS = "model.safetensors"  # checkpoints before DCP
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
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: TrainerState,
    extra_modules: dict[str, Any] | None = None,
    config_yaml: str,
    rank: int = 0,
    world_size: int = 1,
    barrier: Any = None,
    keep: int = 2,
    trainable_only: bool = False,
) -> Path | None:
    """Write ``run_dir/checkpoints/step-N`` atomically; every rank calls this (collective).

    ``module``: what DCP saves with the optimizer (train/parallel.py ``Trainable``: the student and
    the loss's modules), its tensors as they lie: shards of a sharded student, whole ones of a
    replicated one. ``trainable_only``: leave out the frozen parameters (a LoRA student's base,
    which resuming loads again from the student it names): the adapters and their AdamW state alone.
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
        save_sharded(tmp / SHARDED_DIR, module, optimizer, trainable_only)  # every rank writes its shard
        torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
        barrier()
        if rank == 0:
            _write_files(tmp, lr_scheduler, state, extra_modules, config_yaml, world_size)
    except BaseException as e:  # a full disk, Ctrl-C: never leave half a checkpoint behind
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            raise RunError(
                f"no space left on the device of {root} while writing the step-{state.step} checkpoint; the "
                f"partial checkpoint was removed and {len(list_checkpoints(run_dir))} complete one(s) remain. "
                "Free space there (or lower keep_checkpoints) and continue with --resume"
            ) from None
        raise
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(root, keep)
    barrier()
    return final if rank == 0 else None


def save_sharded(folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 trainable_only: bool = False) -> None:
    """Weights and optimizer state through DCP (collective): each rank writes what it holds."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(module, optimizer, options=_options(trainable_only))
    dcp.save({"weights": weights, "optimizer": optim}, checkpoint_id=str(folder), no_dist=_no_dist())


def _disk_full(error: BaseException) -> bool:
    """A full disk, also when DCP reports it from one of the ranks inside a CheckpointException."""
    if is_disk_full(error):
        return True
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict):
        return any(_disk_full(f[0] if isinstance(f, tuple) else f) for f in failures.values())
    cause = error.__cause__ or error.__context__
    return cause is not None and _disk_full(cause)


def _write_files(tmp: Path, lr_scheduler: Any, state: TrainerState, extra_modules: dict[str, Any] | None,
                 config_yaml: str, world_size: int) -> None:
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
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    extra_modules: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    other_world_size: bool = False,
    seed: int = 0,
    trainable_only: bool = False,
) -> TrainerState:
    """Restore a checkpoint into ``module`` (as ``save_checkpoint`` got it) and the rest; every rank
    calls this. ``other_world_size``: accept a checkpoint of another number of processes (what is
    exact then: the module docstring). ``trainable_only``: as ``save_checkpoint`` wrote it."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise RunError(f"{path} is not a complete checkpoint (no {STATE_FILE}); pass a checkpoints/step-N directory")
    payload = _read(path / STATE_FILE, lambda f: json.loads(f.read_text()))
    if not isinstance(payload, dict):
        raise CorruptCheckpoint(f"checkpoint file {path / STATE_FILE} is damaged (not a JSON object)")
    saved_world = payload.pop("world_size", 1)
    if saved_world != world_size and not other_world_size:
        raise RunError(
            f"checkpoint {path} was written by {saved_world} process(es) but this run has {world_size}; resume "
            "with the same number of processes to continue exactly, or pass --resume-accept-changes to continue "
            "from its weights and optimizer state (exact) with new random streams and batches cut for this world size"
        )
    if (path / SHARDED_DIR).is_dir() or not (path / LEGACY_WEIGHTS).exists():
        missing, unexpected = load_sharded(path / SHARDED_DIR, module, optimizer, trainable_only)
    else:
        missing, unexpected = _load_legacy(path, module, optimizer)
    if missing or unexpected:
        raise RunError(
            f"checkpoint {path} does not fit this student (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); resume with the student the run started with"
        )
    lr_scheduler.load_state_dict(_read(path / "lr_scheduler.pt", _torch_load))
    for name, extra in (extra_modules or {}).items():
        extra.load_state_dict(_read(path / f"{name}.pt", _torch_load))
    if saved_world == world_size:
        set_rng_state(_read(path / f"rng_rank{rank}.pt", _torch_load))
    else:
        warnings.warn(f"resuming {path} ({saved_world} process(es)) on {world_size}: weights, optimizer state, "
                      "step, LR schedule, loss state and data position are restored exactly; the random streams "
                      "start afresh and the batches from here on are cut for this world size", stacklevel=2)
        fresh = seed + int(payload.get("step", 0)) * 1_000_003 + rank
        random.seed(fresh)
        np.random.seed(fresh % 2**32)
        torch.manual_seed(fresh)
    try:
        return TrainerState(**payload)
    except TypeError as e:
        raise CorruptCheckpoint(f"checkpoint file {path / STATE_FILE} is damaged ({e})") from None


def load_sharded(folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 trainable_only: bool = False) -> tuple[list[str], list[str]]:
    """Read a DCP folder into ``module`` and ``optimizer``, resharded to how they lie now (collective).

    Returns the (missing, unexpected) weight names; nothing is loaded then. Parameters the saved
    optimizer held no state for (never given a gradient) get none now either.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    saved = set(sharded_metadata(folder).state_dict_metadata)
    options = _options(trainable_only)
    weights, optim = get_state_dict(module, optimizer, options=options)  # creates AdamW's state, to be overwritten
    names = {k.removeprefix("weights.") for k in saved if k.startswith("weights.")}
    missing, unexpected = sorted(set(weights) - names), sorted(names - set(weights))
    if missing or unexpected:
        return missing, unexpected
    optim["state"] = {fqn: st for fqn, st in optim["state"].items()
                      if any(f"optimizer.state.{fqn}.{key}" in saved for key in st)}
    target = {"weights": weights, "optimizer": optim}
    try:
        dcp.load(target, checkpoint_id=str(folder), no_dist=_no_dist())
    except BaseException as e:  # noqa: BLE001 - DCP wraps every rank's failure in a CheckpointException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CorruptCheckpoint(f"checkpoint file {folder} is damaged ({_first_line(e)})") from None
    set_state_dict(module, optimizer, model_state_dict=target["weights"], optim_state_dict=target["optimizer"],
                   options=options)
    return [], []


def _options(trainable_only: bool) -> Any:
    """DCP's state-dict options: every tensor, or the trainable ones alone (the frozen rest stays)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False) if trainable_only else StateDictOptions()


def sharded_metadata(folder: Path) -> Any:
    """DCP's index of a checkpoint folder, after checking that every shard file is whole.

    A shard cut short (a copy interrupted, a full disk outside our control) is named here, before
    any tensor is read: the index says where every tensor's bytes end.
    """
    index = folder / ".metadata"
    metadata = _read(index, lambda f: pickle.loads(f.read_bytes()))
    ends: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        shard = folder / name
        if not shard.is_file():
            raise CorruptCheckpoint(f"checkpoint file {shard} is missing")
        if shard.stat().st_size < end:
            raise CorruptCheckpoint(f"checkpoint file {shard} is damaged (truncated: {shard.stat().st_size} of "
                                    f"at least {end} bytes)")
    return metadata


def _load_legacy(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list[str], list[str]]:
    """A checkpoint from before DCP: whole weights (``model.safetensors``, tied weights once) and the
    whole optimizer state (``optimizer.pt``: a plain ``state_dict`` keyed by index, or by name when
    the run was sharded), read on every rank and scattered into the module as it lies now."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    from .parallel import tied_groups

    student = module.model
    weights = _read(path / LEGACY_WEIGHTS, lambda f: load_file(str(f)))
    for names in tied_groups(student):
        if names[0] in weights:
            weights.update({extra: weights[names[0]] for extra in names[1:]})
    expected = set(student.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        return missing, unexpected
    optim = _read(path / "optimizer.pt", _torch_load)
    if optim.get("state") and all(isinstance(k, int) for k in optim["state"]):
        optim = _named_optimizer_state(module, optimizer, optim)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(student, weights, options=options)
    set_optimizer_state_dict(module, optimizer, optim_state_dict=optim, options=options)
    return [], []


def _named_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer, plain: dict[str, Any]) -> dict[str, Any]:
    """``optimizer.state_dict()`` (parameters numbered across groups) -> the same keyed by parameter name."""
    names = {id(p): name for name, p in module.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [dict(g, params=[order[i] for i in g["params"]]) for g in plain["param_groups"]]
    return {"state": {order[i]: v for i, v in plain["state"].items()}, "param_groups": groups}


def checkpoint_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The student's whole weights in a checkpoint (any format, written by any number of processes),
    read in this one process: names as the model's ``state_dict`` has them, on the CPU."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    checkpoint = Path(checkpoint)
    if not (checkpoint / SHARDED_DIR).is_dir() and (checkpoint / LEGACY_WEIGHTS).is_file():
        return _read(checkpoint / LEGACY_WEIGHTS, lambda f: load_file(str(f)))
    folder = checkpoint / SHARDED_DIR
    prefix = "weights.model."
    target = {key.removeprefix("weights."): torch.empty(meta.size, dtype=meta.properties.dtype)
              for key, meta in sharded_metadata(folder).state_dict_metadata.items()
              if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    try:
        dcp.load({"weights": target}, checkpoint_id=str(folder), no_dist=_no_dist())
    except BaseException as e:  # noqa: BLE001 - DCP wraps every failure in a CheckpointException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CorruptCheckpoint(f"checkpoint file {folder} is damaged ({_first_line(e)})") from None
    return {k.removeprefix("model."): v for k, v in target.items()}


def _no_dist() -> bool:
    """One process without a process group: DCP reads and writes alone (and would warn that it does)."""
    alone = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    if alone:
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    return alone


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) else inner
        text = f"{type(inner).__name__}: {' '.join(str(inner).split())}"
    return text[:200]


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
