"""Reading and writing JSON rows with the position of each row, so errors can name it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..files import atomic_path
from .errors import DataError


NOT_UTF8_FIX = "save the file as UTF-8 JSON or JSONL (is it the right file?)"


def iter_json_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, row)`` for a JSONL file or a JSON array file, lazily for JSONL.

    ``where`` is ``"path:line"`` for JSONL and ``"path[index]"`` for a JSON array. A ``.json``
    file may hold either (LLaVA ships arrays, many others ship JSONL with a .json suffix).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found", "check the path")
    if _starts_with_array(path):
        yield from _array_rows(path)
    else:
        yield from _line_rows(path)


def _starts_with_array(path: Path) -> bool:
    with open(path, "rb") as f:
        while True:
            ch = f.read(1)
            if not ch or not ch.isspace():
                return ch == b"["


def _array_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", f"invalid JSON ({e.msg})", "fix the JSON syntax") from None
    except UnicodeDecodeError as e:
        raise DataError(str(path), f"not UTF-8 text (byte {e.start})", NOT_UTF8_FIX) from None
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _line_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, DataError(where, f"not UTF-8 text (byte {e.start} of the line)", NOT_UTF8_FIX)
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                # Yield the error instead of raising so skip_bad can count it like any bad row.
                yield where, DataError(where, f"invalid JSON ({e.msg})", "fix the line or drop it")


def read_json_object(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dumps(row: Any) -> str:
    """Canonical JSON: sorted keys and fixed separators, so equal data gives equal bytes."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows to a temporary file renamed into place: a failure never leaves half a file."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            n += 1
    return n
