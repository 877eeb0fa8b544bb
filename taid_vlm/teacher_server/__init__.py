"""A teacher (or a sampler) on a vLLM server: start it, reach it, score records with it.

Sits above ``models/`` (it renders records with the checkpoint's own processor) and below
``teacher_cache/`` (which can fill a cache from a server) and ``train/`` (``ServedTeacher``). vLLM
itself runs in its own environment (``scripts/setup_vllm.sh``) and is reached only over HTTP.
Names resolve on first use, so the CLI's ``command`` module stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServerConfig": "config", "ServerError": "client", "start_server": "launcher", "ServerProcess": "launcher",
    "ServerClient": "client", "is_url": "client", "ServedModel": "served", "open_served": "served",
    "served_name": "fingerprint",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'taid_vlm.teacher_server' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
