"""The offline teacher cache: run the teacher once, distil many times.

Sits above ``models/`` and ``data/`` (it runs a teacher adapter over records) and below
``train/`` (which reads it through ``CachedTeacher``). The divergence math on top-k + tail lives
in ``losses/topk.py``. Names resolve on first use, so the CLI's ``command`` module stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_cache": "builder", "BuildResult": "builder",
    "TeacherCache": "store", "CacheError": "store",
    "record_hash": "fingerprint", "teacher_fingerprint": "fingerprint",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'taid_vlm.teacher_cache' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
