"""Keyed student runs: a long benchmark that is interrupted resumes where it stopped.

A run's folder is marked with the key of everything that decides its result (initial weights,
teacher, data, loss, budget, seed and settings); a finished run with the same key is reused
instead of trained again, and a run with any other key is trained anew.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..demo import pipeline
from ..demo.presets import TrainBudget
from ..losses import loss_class


def student_run_key(init_dir: Path, teacher_dir: Path | None, data_dir: Path, loss: str, budget: TrainBudget,
                    seed: int, t_start: float, **config: Any) -> dict[str, Any]:
    """Everything that decides a student run's result: a finished run with this key can be reused."""
    return {"loss": loss, "budget": dataclasses.asdict(budget), "seed": seed, "t_start": t_start, "config": config,
            "init": pipeline.content_digest(init_dir),
            "teacher": pipeline.content_digest(teacher_dir) if loss_class(loss).needs_teacher else None,
            "data": pipeline.key_of(data_dir)}


def is_finished(run_dir: Path, key: dict[str, Any]) -> bool:
    return pipeline.is_cached(run_dir, key) and (run_dir / "student").is_dir()


def reused_or_distilled(run_dir: Path, init_dir: Path, teacher_dir: Path | None, data_dir: Path, loss: str,
                        budget: TrainBudget, seed: int, t_start: float, progress: bool, **config: Any) -> Path:
    """The demo's ``distil_student`` run in ``run_dir``, or the finished run already there when
    nothing that decides it changed; returns ``run_dir``."""
    key = student_run_key(init_dir, teacher_dir, data_dir, loss, budget, seed, t_start, **config)
    if is_finished(run_dir, key):
        return run_dir
    pipeline.distil_student(run_dir, init_dir, teacher_dir, data_dir, loss, budget, seed, t_start, progress, **config)
    pipeline.mark_cached(run_dir, key)
    return run_dir
