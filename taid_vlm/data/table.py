"""Training records of any size, read when they are used: one byte offset per record in memory.

``load_records`` builds every record up front (a Python object per record, every image checked):
right for evaluation files and small sets, minutes and gigabytes for LLaVA-665k. ``open_records``
gives a ``RecordTable`` instead, a ``Sequence[Record]`` over the file itself:

- one pass over the file finds where each row starts (JSONL lines, or the elements of a JSON
  array, read a block at a time) and keeps its offset, length, line and image count in compact
  arrays (about 30 bytes a record); the row is parsed (``json``) in that pass, never built;
- a record is built (``parse.py``, the same builders as ``load_records``) when it is asked for,
  in the DataLoader worker that renders it;
- ``validate_images`` says what is checked up front:
  ``sample`` (the default): every image file must exist (one ``stat`` each), and 256 rows spread
  over the set are built and their images decoded, so a set of the wrong format or with
  unreadable images fails in seconds;
  ``all``: every row is built and every image decoded, as ``load_records`` does (slow on large sets);
  ``none``: nothing beyond the JSON (for sets checked before);
- a bad row or image met later (a row the sample did not cover, a file changed since) follows
  ``skip_bad``: skipped with a warning naming its file and line (the loop takes the next good
  record in its place, the same on every run, so a resume stays exact), or the run stops with
  that one error.

Rows that are not valid JSON are found in the first pass and follow ``skip_bad`` there, as with
``load_records``; record ids are the same as ``load_records`` gives.
"""

from __future__ import annotations

import codecs
import json
import os
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadRecordCounter, DataError
from .jsonl import NOT_UTF8_FIX, _starts_with_array
from .parse import RowContext, chat_record, llava_record
from .records import Record

VALIDATE_IMAGES = ("all", "sample", "none")
SAMPLE_ROWS = 256  # rows built and decoded up front by validate_images=sample
TABLE_FORMATS = ("llava", "chat")  # the training formats a table reads; others load as lists
_BUILDERS = {"llava": llava_record, "chat": chat_record}
_BLOCK = 8 << 20  # bytes read at a time when scanning a JSON array


class RecordTable(Sequence[Record]):
    """The records of one JSONL / JSON-array file, built on access (see the module docstring)."""

    def __init__(self, path: Path, fmt: str, offsets: np.ndarray, lengths: np.ndarray, lines: np.ndarray,
                 ordinals: np.ndarray, images: np.ndarray, array_rows: bool, base_dir: Path,
                 require_response: bool = True):
        self.path, self.format, self.array_rows = Path(path), fmt, array_rows
        self.offsets, self.lengths, self.lines, self.ordinals, self.images = offsets, lengths, lines, ordinals, images
        self.base_dir, self.require_response = base_dir, require_response
        self._file: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            keep = np.arange(len(self))[index]
            return self.subset(keep)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._build(index, "none")

    def subset(self, keep: np.ndarray) -> "RecordTable":
        return RecordTable(self.path, self.format, self.offsets[keep], self.lengths[keep], self.lines[keep],
                           self.ordinals[keep], self.images[keep], self.array_rows, self.base_dir,
                           self.require_response)

    def where(self, index: int) -> str:
        return f"{self.path}[{self.lines[index]}]" if self.array_rows else f"{self.path}:{self.lines[index]}"

    def _raw(self, index: int) -> bytes:
        if self._file is None or self._pid != os.getpid():  # a DataLoader worker opens its own handle
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        self._file.seek(int(self.offsets[index]))
        return self._file.read(int(self.lengths[index]))

    def _build(self, index: int, check_images: str) -> Record:
        where = self.where(index)
        try:
            row = json.loads(self._raw(index))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # the file changed since it was indexed
            raise DataError(where, f"unreadable row ({e})", "the file changed since the run started; restart it")
        ctx = RowContext(where, f"{self.path.stem}-{self.ordinals[index]}", self.base_dir, check_images)
        return _BUILDERS[self.format](row, ctx, self.require_response)

    def size_estimates(self) -> tuple[np.ndarray, np.ndarray]:
        """(bytes of each row's JSON, images of each row): an upper bound on its text bytes and its image count."""
        return self.lengths, self.images

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": -1}


def open_records(path: str | Path, fmt: str, *, skip_bad: bool = False, require_response: bool = True,
                 validate_images: str = "sample", image_dir: str | Path | None = None,
                 limit: int | None = None) -> RecordTable:
    """Index a LLaVA or chat file (JSONL or a JSON array) as a ``RecordTable``; checks per ``validate_images``."""
    if fmt not in TABLE_FORMATS:
        raise DataError(str(path), f"format {fmt!r} is not read as a table", f"use one of {TABLE_FORMATS}")
    if validate_images not in VALIDATE_IMAGES:
        raise DataError(str(path), f"validate_images={validate_images!r}", f"use one of {VALIDATE_IMAGES}")
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found", "check the path")
    base_dir = Path(image_dir) if image_dir is not None else path.parent
    counter = BadRecordCounter(str(path), skip_bad)
    offsets, lengths, lines, ordinals, images = (array("q") for _ in range(5))
    array_rows = _starts_with_array(path)
    where = (lambda line: f"{path}[{line}]") if array_rows else (lambda line: f"{path}:{line}")
    files = _FileCheck(str(base_dir), where, counter) if validate_images == "sample" else None
    ordinal = 0
    for offset, length, line, row in (_array_rows(path) if array_rows else _line_rows(path)):
        if limit is not None and len(offsets) >= limit:
            break
        if isinstance(row, DataError):
            counter.handle(row)
            continue
        ordinal += 1
        try:
            if validate_images == "all":
                ctx = RowContext(where(line), f"{path.stem}-{ordinal - 1}", base_dir, "open")
                values = _BUILDERS[fmt](row, ctx, require_response).images
            else:
                values = _image_values(row, fmt)
        except DataError as e:
            counter.handle(e)
            continue
        if files is not None and values:
            files.add(len(offsets), line, row, values)
        offsets.append(offset), lengths.append(length), lines.append(line), ordinals.append(ordinal - 1)
        images.append(len(values))
    columns = [np.frombuffer(a, dtype=np.int64) if len(a) else np.zeros(0, np.int64)
               for a in (offsets, lengths, lines, ordinals, images)]
    table = RecordTable(path, fmt, *columns, array_rows=array_rows, base_dir=base_dir,
                        require_response=require_response)
    missing = files.finish() if files is not None else []
    if missing:
        table = table.subset(np.setdiff1d(np.arange(len(table)), missing))
    if validate_images != "all" and len(table):
        table = _check_sample(table, "open" if validate_images == "sample" else "none", counter)
    counter.warn()
    return table


class _FileCheck:
    """Every image path must name a file: checked a few thousand at a time on threads (a ``stat`` waits
    on the file system, most of all a network one, and lets other threads run meanwhile)."""

    BATCH = 4096

    def __init__(self, base_dir: str, where: Any, counter: BadRecordCounter):
        from concurrent.futures import ThreadPoolExecutor

        self.base_dir, self.where, self.counter = base_dir, where, counter
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.pending: list[tuple[int, int, Any, str]] = []
        self.missing: list[int] = []

    def add(self, slot: int, line: int, row: Any, values: list[Any]) -> None:
        for value in values:
            if isinstance(value, str) and not value.startswith(("http://", "https://")):
                if value.startswith("~"):
                    value = os.path.expanduser(value)
                full = value if value.startswith("/") else f"{self.base_dir}/{value}"
                self.pending.append((slot, line, row.get("id", "?") if isinstance(row, dict) else "?", full))
        if len(self.pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        chunks = [batch[i : i + 256] for i in range(0, len(batch), 256)]
        for chunk, found in zip(chunks, self.pool.map(lambda c: [os.path.isfile(p[3]) for p in c], chunks)):
            for (slot, line, record_id, full), ok in zip(chunk, found):
                if ok or (self.missing and self.missing[-1] == slot):
                    continue
                self.counter.handle(DataError(
                    f"{self.where(line)} (record {record_id!r})", f"image not found: {os.path.abspath(full)}",
                    "fix the path (relative paths resolve against the data file's folder, or pass image_dir=) "
                    "or skip such records with skip_bad=True"))
                self.missing.append(slot)

    def finish(self) -> list[int]:
        try:
            self._flush()
        finally:
            self.pool.shutdown()
        return self.missing


def _check_sample(table: RecordTable, check_images: str, counter: BadRecordCounter) -> RecordTable:
    """Build ``SAMPLE_ROWS`` rows spread over the table (and decode their images); bad ones follow skip_bad."""
    picked = np.unique(np.linspace(0, len(table) - 1, min(SAMPLE_ROWS, len(table))).round().astype(np.int64))
    bad = []
    for index in picked.tolist():
        try:
            table._build(index, check_images)
        except DataError as e:
            counter.handle(e)
            bad.append(index)
    return table.subset(np.setdiff1d(np.arange(len(table)), bad)) if bad else table


def _image_values(row: Any, fmt: str) -> list[Any]:
    """The row's image fields as written (the rest of the row is checked when it is built)."""
    if not isinstance(row, dict):
        return []  # not a record: the builder names the problem when the row is used (or sampled)
    values = row.get("images")
    if values is None:
        image = row.get("image")
        values = [] if image in (None, "") else [image]
    elif not isinstance(values, list):
        values = [values]
    if fmt == "chat":
        for m in row.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                values = values + [p.get("image", p.get("path")) for p in content
                                   if isinstance(p, dict) and p.get("type") == "image" and p.get("image", p.get("path"))]
    return values


# ---- where rows start ---------------------------------------------------------------------------------


def _line_rows(path: Path) -> Iterator[tuple[int, int, int, Any]]:
    """(offset, length, line number, parsed row or DataError) for each non-blank line of a JSONL file."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8"))  # str: json.loads would sniff the encoding of bytes
            except UnicodeDecodeError as e:
                row = DataError(where, f"not UTF-8 text (byte {e.start} of the line)", NOT_UTF8_FIX)
            except json.JSONDecodeError as e:
                row = DataError(where, f"invalid JSON ({e.msg})", "fix the line or drop it")
            yield start, len(raw), lineno, row


def _array_rows(path: Path) -> Iterator[tuple[int, int, int, Any]]:
    """(offset, length, element index, parsed row) of each element of a JSON array, read a block at a time."""
    reader = _ArrayReader(path)
    reader.fill()
    reader.skip()
    if reader.peek() != "[":
        raise DataError(str(path), "expected a JSON array", "fix the JSON syntax")
    reader.advance(1)
    index = 0
    while True:
        reader.skip()
        ch = reader.peek()
        if ch == "]":
            return
        if ch == "":
            raise DataError(str(path), "the JSON array is not closed", "fix the JSON syntax")
        if index:
            if ch != ",":
                raise DataError(f"{path}[{index}]", "invalid JSON (expected ',' between elements)", "fix the JSON syntax")
            reader.advance(1)
            reader.skip()
        start, row, length = reader.element(index)
        yield start, length, index, row
        index += 1


class _ArrayReader:
    """A window of decoded text over a file, with the byte offset of its read position."""

    MAX_FILLS = 8  # an element may span this many blocks before it counts as malformed

    def __init__(self, path: Path):
        self.path, self.file = path, open(path, "rb")
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.decoder = json.JSONDecoder()
        self.text, self.pos, self.byte, self.eof = "", 0, 0, False
        self.block = min(1 << 16, _BLOCK)  # small first (a format sniff reads one element), then up to _BLOCK

    def __del__(self) -> None:
        self.file.close()

    def fill(self) -> None:
        block = self.file.read(self.block)
        self.block = min(2 * self.block, _BLOCK)
        self.eof = not block
        try:
            decoded = self.utf8.decode(block, final=self.eof)
        except UnicodeDecodeError as e:
            raise DataError(str(self.path), f"not UTF-8 text (near byte {self.byte + e.start})", NOT_UTF8_FIX) from None
        self.text, self.pos = self.text[self.pos:] + decoded, 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def advance(self, chars: int) -> None:  # only over ASCII (structure and whitespace): one byte each
        self.pos += chars
        self.byte += chars

    def skip(self) -> None:
        while True:
            start = self.pos
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            self.byte += self.pos - start
            if self.pos < len(self.text) or self.eof:
                return
            self.fill()

    def element(self, index: int) -> tuple[int, Any, int]:
        for _ in range(self.MAX_FILLS + 1):
            try:
                row, end = self.decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                if self.eof:
                    raise DataError(f"{self.path}[{index}]", f"invalid JSON ({e.msg})", "fix the JSON syntax") from None
                self.fill()  # the element may run on into the next block
                continue
            if end >= len(self.text) and not self.eof:
                self.fill()  # a bare number could go on
                continue
            start, length = self.byte, len(self.text[self.pos:end].encode("utf-8"))
            self.pos, self.byte = end, self.byte + length
            return start, row, length
        raise DataError(f"{self.path}[{index}]", "invalid JSON (an element that does not end)", "fix the JSON syntax")

