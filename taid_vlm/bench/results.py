"""The one results writer: every benchmark's JSON (and its Markdown table beside it) is written
here, atomically (a reader sees the old file or the new one), as indented JSON with a final
newline, the layout of the committed results in docs/results/ that scripts/readme_tables.py reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import write_text_atomically


def write_result(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write one benchmark result (a JSON object) to ``path``, creating its folder."""
    return write_text_atomically(path, json.dumps(payload, indent=1) + "\n")


def write_table(path: str | Path, text: str) -> Path:
    """Write a result's Markdown table (or any text rendered from a result) to ``path``."""
    return write_text_atomically(path, text)


def read_result(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
