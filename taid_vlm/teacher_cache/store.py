"""The on-disk teacher cache: settings, shards, the record index, and reading it back.

Layout of a cache directory::

    cache.json                       settings + teacher fingerprint; "complete" once every shard exists
    shards/shard-00000.safetensors   one shard per ``records_per_shard`` consecutive records
    teacher_text/                    the teacher's tokenizer, chat template and family: what a student
                                     with another tokenizer aligns the cached rows by (cross_tokenizer)

A shard holds, for each response token of its records in (record, turn, token) order:
``token_ids [N]`` (the response token, to check the student tokenizes alike), ``ids [N, k]`` the
teacher's top-k token ids (uint16 when the vocabulary fits, else int32), ``logprobs [N, k]``
their log-probabilities (bfloat16 by default), ``tail [N]`` the log of the remaining mass
(float32), and ``offsets [R + 1]`` where each record's rows start. Its metadata lists the
records' ids and content hashes (and the teacher's answers with ``--responses teacher``).

Shards are written to a temporary name and renamed, so a shard file is complete or absent; a
killed build resumes by computing only the shards that are missing. Which records go into
which shard depends only on their position, so the finished cache is the same whether one
process or several built it, interrupted or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.records import Record
from ..errors import UserError
from ..files import atomic_path, write_text_atomically
from ..losses.topk import TopK
from ..models.cross_tokenizer import SIDE_FILE, TextSide
from .fingerprint import record_hash, teacher_name

FORMAT_VERSION = 1
META_FILE = "cache.json"
SHARD_DIR = "shards"
TEACHER_TEXT_DIR = "teacher_text"
LOGIT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
RESPONSE_SOURCES = ("data", "teacher")


class CacheError(UserError):
    """The cache does not match the data or the run; the message names the record and the fix."""


@dataclass
class CacheSettings:
    top_k: int
    logit_dtype: str
    responses: str
    records_per_shard: int
    teacher: dict[str, Any]
    num_records: int
    record_ids_sha256: str  # which records, in which order: a resumed build must see the same list
    format: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return (self.num_records + self.records_per_shard - 1) // self.records_per_shard

    @property
    def id_dtype(self) -> torch.dtype:
        return torch.uint16 if self.teacher["vocab_size"] <= 1 << 16 else torch.int32

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "top_k": self.top_k, "logit_dtype": self.logit_dtype, "responses": self.responses,
                "records_per_shard": self.records_per_shard, "num_records": self.num_records,
                "record_ids_sha256": self.record_ids_sha256, "teacher": self.teacher, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CacheSettings":
        known = ("format", "top_k", "logit_dtype", "responses", "records_per_shard", "num_records", "record_ids_sha256", "teacher")
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(top_k=data["top_k"], logit_dtype=data["logit_dtype"], responses=data["responses"],
                   records_per_shard=data["records_per_shard"], teacher=data["teacher"], num_records=data["num_records"],
                   record_ids_sha256=data["record_ids_sha256"], format=data["format"], extra=extra)


@dataclass
class RecordRows:
    """One record's cached rows, as the builder hands them to ``write_shard``."""

    record_id: str
    content_hash: str
    token_ids: torch.Tensor
    topk: TopK
    responses: list[str] | None = None


def shard_path(root: Path, index: int) -> Path:
    return root / SHARD_DIR / f"shard-{index:05d}.safetensors"


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_meta(root: Path) -> dict[str, Any] | None:
    path = root / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{path} is not valid JSON ({e}); delete the cache directory and rebuild it") from None


def write_shard(path: Path, rows: list[RecordRows], settings: CacheSettings) -> None:
    """Write one shard atomically (temporary file, fsync, rename)."""
    logit_dtype = LOGIT_DTYPES[settings.logit_dtype]
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + int(r.token_ids.numel()))
    k = settings.top_k
    empty = torch.empty(0, k)
    tensors = {
        "token_ids": torch.cat([r.token_ids.reshape(-1) for r in rows] or [torch.empty(0)]).to(torch.int32),
        "ids": torch.cat([r.topk.ids for r in rows] or [empty]).to(settings.id_dtype),
        "logprobs": torch.cat([r.topk.logprobs for r in rows] or [empty]).to(logit_dtype),
        "tail": torch.cat([r.topk.tail for r in rows] or [torch.empty(0)]).to(torch.float32),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
    }
    metadata = {"records": json.dumps([[r.record_id, r.content_hash] for r in rows])}
    if settings.responses == "teacher":
        metadata["responses"] = json.dumps([r.responses for r in rows])
    with atomic_path(path) as tmp:
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp), metadata=metadata)


def shard_records(path: Path) -> list[tuple[str, str]] | None:
    """The (id, content hash) list a finished shard holds; None when the file is unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return [tuple(x) for x in json.loads((f.metadata() or {})["records"])]
    except Exception:  # a truncated or foreign file: it will be rebuilt
        return None


@dataclass
class _Entry:
    shard: int
    start: int
    end: int
    content_hash: str
    position: int  # index within the shard (for its teacher responses)


class TeacherCache:
    """A finished cache opened for training: looks records up and returns their top-k rows."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = read_meta(self.root)
        if meta is None:
            raise CacheError(f"{self.root}: no teacher cache here ({META_FILE} missing); build one with "
                             f"`taid-vlm teacher-cache --teacher T --data D --output {self.root}`")
        if meta.get("format") != FORMAT_VERSION:
            raise CacheError(f"{self.root}: cache format {meta.get('format')} is not {FORMAT_VERSION}; rebuild it with this version")
        if not meta.get("complete"):
            raise CacheError(f"{self.root}: the cache build did not finish; run the same `taid-vlm teacher-cache` "
                             "command again to complete it (it resumes)")
        self.settings = CacheSettings.from_dict(meta)
        self.index: dict[str, _Entry] = {}
        self._responses: dict[int, list] = {}
        self._handles: dict[int, Any] = {}
        for shard in range(self.settings.num_shards):
            path = shard_path(self.root, shard)
            with safe_open(str(path), framework="pt") as f:
                records = json.loads(f.metadata()["records"])
                offsets = f.get_tensor("offsets").tolist()
                if "responses" in f.metadata():
                    self._responses[shard] = json.loads(f.metadata()["responses"])
            for position, (record_id, content_hash) in enumerate(records):
                self.index[record_id] = _Entry(shard, offsets[position], offsets[position + 1], content_hash, position)

    @property
    def teacher(self) -> dict[str, Any]:
        return self.settings.teacher

    @property
    def top_k(self) -> int:
        return self.settings.top_k

    def check_run(self, teacher: str | None, max_length: int | None) -> None:
        """The run must use the settings the cache was built with (teacher, max_length)."""
        cached = self.teacher
        if teacher and teacher_name(teacher) != cached["name"]:
            raise CacheError(f"teacher cache {self.root} was built with teacher {cached['name']!r}, the run names "
                             f"{teacher!r}; drop the teacher setting or rebuild the cache with this teacher")
        if max_length != cached["max_length"]:
            raise CacheError(f"teacher cache {self.root} was built with max_length={cached['max_length']}, the run uses "
                             f"max_length={max_length}; use the same max_length or rebuild the cache")

    def entry(self, record: Record, content_hash: str | None = None) -> _Entry:
        entry = self.index.get(record.id)
        if entry is None:
            raise CacheError(f"record {record.id!r} is not in teacher cache {self.root}; the data has changed since the "
                             "cache was built: rebuild it with `taid-vlm teacher-cache` on this data")
        actual = content_hash or record_hash(record)
        if actual != entry.content_hash:
            raise CacheError(f"record {record.id!r} changed since teacher cache {self.root} was built (content hash "
                             f"{actual} != cached {entry.content_hash}); rebuild the cache on this data")
        return entry

    def check_records(self, records: list[Record]) -> None:
        """Fail before training on the first record that is missing or changed."""
        for record in records:
            self.entry(record)

    def with_teacher_responses(self, records: list[Record]) -> list[Record]:
        """Records whose assistant turns are the teacher's answers stored in the cache."""
        if self.settings.responses != "teacher":
            raise CacheError(f"teacher cache {self.root} scores the data's own responses (built with --responses data); "
                             "rebuild it with --responses teacher or run with responses=data")
        out = []
        for record in records:
            entry = self.entry(record)
            answers = self._responses[entry.shard][entry.position]
            turns = [i for i, m in enumerate(record.messages) if m["role"] == "assistant"]
            messages = [dict(m) for m in record.messages]
            for i, answer in zip(turns, answers):
                messages[i]["content"] = answer
            out.append(record.with_messages(messages))
        return out

    def rows(self, records: list[Record], original_hashes: dict[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor, TopK]:
        """(token_ids, record_index, TopK) for a batch, in (record, turn, token) order."""
        token_ids, record_index, ids, logprobs, tails = [], [], [], [], []
        for i, record in enumerate(records):
            entry = self.entry(record, (original_hashes or {}).get(record.id))
            f = self._handle(entry.shard)
            token_ids.append(f.get_slice("token_ids")[entry.start:entry.end].to(torch.long))
            ids.append(f.get_slice("ids")[entry.start:entry.end].to(torch.long))
            logprobs.append(f.get_slice("logprobs")[entry.start:entry.end])
            tails.append(f.get_slice("tail")[entry.start:entry.end])
            record_index.append(torch.full((entry.end - entry.start,), i, dtype=torch.long))
        return torch.cat(token_ids), torch.cat(record_index), TopK(torch.cat(ids), torch.cat(logprobs), torch.cat(tails))

    def teacher_text(self) -> TextSide:
        """The teacher's side of a cross-tokenizer alignment, saved with the cache by the builder."""
        directory = self.root / TEACHER_TEXT_DIR
        if not (directory / SIDE_FILE).is_file():
            raise CacheError(f"teacher cache {self.root} has no {TEACHER_TEXT_DIR}/ (it was built before cross-tokenizer "
                             "distillation existed); rebuild it with `taid-vlm teacher-cache` to distil a student with "
                             "another tokenizer from it")
        return TextSide.load(directory, f"teacher cache {self.root}")

    def _handle(self, shard: int):
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(shard_path(self.root, shard)), framework="pt")
        return self._handles[shard]
