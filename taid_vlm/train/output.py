"""The run directory's life: checked before anything is touched, claimed, committed, or restored.

A distillation run owns a few names inside ``--output`` (``RUN_FILES``). The order of events
is what keeps a user's previous work safe:

1. ``RunOutput(config)`` only looks: it refuses an occupied directory without ``--overwrite`` /
   ``--resume``, a teacher/student/data inside a directory about to be replaced, a resume whose
   checkpoint was made with other models, data or loss, and finds the checkpoints to resume from.
2. ``claim()`` runs after the models and data passed their checks: it creates the directory
   and, with ``--overwrite``, moves the previous run's files into a hidden ``.replaced-*`` folder
   (a rename: nothing is deleted yet).
3. ``started(config_yaml)`` runs once the first optimizer step was applied: it writes
   ``config.yaml`` atomically and only now deletes the replaced run.
4. ``abandon()`` runs when the run fails or is interrupted before that: the failed run's files
   are removed and the previous run's put back exactly where they were. Without a previous run,
   a failed start keeps its ``metrics.jsonl`` (what was skipped, and why) and a retry may reuse
   the folder: only ``STARTED_MARKERS`` make it "another run".
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import RunError
from ..files import write_text_atomically
from .checkpoint import CHECKPOINT_DIR, list_checkpoints
from .config import DistillConfig, resume_settings

RUN_FILES = ("config.yaml", "metrics.jsonl", CHECKPOINT_DIR, "student", "ranks.json", "teacher_responses.jsonl",
             "tensorboard")
# A run that got past its first step leaves one of these; metrics.jsonl alone is a failed start.
STARTED_MARKERS = ("config.yaml", CHECKPOINT_DIR, "student")
ASIDE_PREFIX = ".replaced-"
# What a resumed run must share with the run that wrote the checkpoint, or the result is neither
# (plus every setting the loss class declares: TAID's schedule, CTKD's ramp, a loss's parameters).
RESUME_KEYS = ("teacher", "student", "data", "data_format", "data_split", "data_limit", "max_length", "responses",
               "loss", "distil_ratio", "temperature", "batch_size", "grad_accum", "seed", "on_policy",
               "streaming")


class OutputInUse(RunError, FileExistsError):
    """--output holds another run and neither --resume nor --overwrite says what to do with it."""


class RunOutput:
    def __init__(self, config: DistillConfig, is_main: bool = True, barrier: Callable[[], None] | None = None):
        self.config = config
        self.out = Path(config.output)
        self.is_main = is_main
        self.barrier = barrier or (lambda: None)
        self.aside: Path | None = None
        self.created = False
        self.committed = False
        # Newest first; the loop falls back along this list when a checkpoint is corrupt.
        self.resume_candidates: list[Path] = self._check()

    # ---- 1. look, touch nothing ---------------------------------------------------------------

    def _check(self) -> list[Path]:
        out, config = self.out, self.config
        if out.exists() and not out.is_dir():
            raise RunError(f"output {out} is a file, not a folder; choose another --output")
        for left in sorted(out.glob(f"{ASIDE_PREFIX}*")) if out.is_dir() else []:
            warnings.warn(f"{left} holds a run that an --overwrite killed before its first step set aside; move "
                          f"its files back into {out} or delete it", stacklevel=3)
        if config.resume not in (None, "", "auto"):
            checkpoint = Path(config.resume)
            if not checkpoint.is_dir():
                raise RunError(f"resume={config.resume}: no such checkpoint directory; pass a "
                               f"{CHECKPOINT_DIR}/step-N folder or --resume alone for the latest one in --output")
            self._check_resume_matches([checkpoint])
            return [checkpoint]
        if config.resume == "auto":
            found = list_checkpoints(out)[::-1]
            if found:
                self._check_resume_matches(found)
                return found
            if self.holds_run:
                raise RunError(f"--resume: {out / CHECKPOINT_DIR} holds no complete checkpoint to continue from; "
                               "pass --overwrite to start this run over")
            warnings.warn(f"--resume: no checkpoint in {out} yet; starting the run from the beginning", stacklevel=3)
            return []
        if self.holds_run and not config.overwrite:
            raise OutputInUse(f"output directory {out} holds another run; pass --resume (resume=auto) to continue it "
                           "or --overwrite to replace it")
        if config.overwrite and out.is_dir():
            for name in ("teacher", "student", "data"):
                value = getattr(config, name)
                if value and _inside(Path(value), out):
                    raise RunError(f"{name}={value} lies inside --output {out}, which --overwrite would replace; "
                                   "move it out of that folder or choose another --output")
        return []

    @property
    def holds_run(self) -> bool:
        return self.out.is_dir() and any((self.out / m).exists() for m in STARTED_MARKERS)

    def _check_resume_matches(self, checkpoints: list[Path]) -> None:
        saved = next((c for c in (_saved_config(p) for p in checkpoints) if c is not None), None)
        if saved is None or self.config.resume_accept_changes:
            return
        now = self.config.to_dict()
        changed = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in RESUME_KEYS
                   if k in saved and _normal(k, saved[k]) != _normal(k, now[k])]
        loss = self.config.loss_class
        if loss is not None and saved.get("loss") == now["loss"]:  # any config.yaml version: flat keys are aliases
            before, after = resume_settings(saved, loss), resume_settings(now, loss)
            changed += [f"{k}: {before[k]!r} -> {after[k]!r}" for k in after if before[k] != after[k]]
        if changed:
            raise RunError(f"--resume: this run differs from the checkpoint's ({checkpoints[0]}) in "
                           f"{'; '.join(changed)}. Use the original settings, or pass --resume-accept-changes "
                           "to continue with the new ones")

    # ---- 2. claim: create, move the previous run aside -----------------------------------------

    def claim(self) -> None:
        if self.is_main:
            self.created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")  # a read-only or full output fails here, before any work
            probe.unlink()
            if self.config.overwrite and not self.resume_candidates:
                present = [n for n in RUN_FILES if (self.out / n).exists()]
                if present:
                    self.aside = self.out / f"{ASIDE_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                    self.aside.mkdir()
                    for name in present:
                        os.replace(self.out / name, self.aside / name)
        self.barrier()

    # ---- 3. commit ------------------------------------------------------------------------------

    def started(self, config_yaml: str) -> None:
        """The first step was applied: record the config and let the replaced run go."""
        if self.committed:
            return
        if self.is_main:
            write_text_atomically(self.out / "config.yaml", config_yaml)
            if self.aside is not None:
                shutil.rmtree(self.aside, ignore_errors=True)
                self.aside = None
        self.committed = True

    # ---- 4. restore on failure -------------------------------------------------------------------

    def abandon(self) -> None:
        """Failure before the first applied step: put the previous run back as it was.

        Runs while another error is on its way to the user, so it never raises: if the files
        cannot be moved back, a warning says where the previous run is."""
        if self.committed or not self.is_main:
            return
        try:
            self._restore()
        except OSError as e:
            warnings.warn(f"could not move the previous run back into {self.out} ({e}); its files are in {self.aside}",
                          stacklevel=2)

    def _restore(self) -> None:
        if self.aside is not None and self.aside.is_dir():
            for name in RUN_FILES:  # the failed run's files make way, so the folder is exactly as before
                target = self.out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            for saved in self.aside.iterdir():
                os.replace(saved, self.out / saved.name)
            self.aside.rmdir()
            self.aside = None
        if self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _saved_config(checkpoint: Path) -> dict[str, Any] | None:
    try:
        saved = yaml.safe_load((checkpoint / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return saved if isinstance(saved, dict) else None


def _normal(key: str, value: Any) -> Any:
    """Paths compare by where they point (a run resumed from another working directory still matches)."""
    if key in ("teacher", "student", "data") and isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value
