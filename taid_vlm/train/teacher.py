"""Where the teacher's signal comes from, kept apart from how it is compared.

The loop asks a teacher signal for ``ResponseOutputs`` over a batch of records and never looks
inside: a live model (``LiveTeacher``), an offline cache of top-k teacher log-probs
(``CachedTeacher``, the ``teacher_cache`` key) or a vLLM server's top-k prompt log-probs
(``ServedTeacher``, the ``teacher_server`` key: the same top-k + tail the cache holds). With
``teachers`` each record goes to the teacher its ``teacher`` tag names (``routes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ..data import Record
from ..models import ModelAdapter
from ..models.adapter import RenderedBatch
from ..models.outputs import ResponseOutputs
from ..teacher_cache import CacheError, TeacherCache, record_hash
from ..teacher_server import ServedModel


class TeacherSignal(Protocol):
    def outputs(self, records: Sequence[Record]) -> ResponseOutputs: ...


class LiveTeacher:
    """A teacher model run forward on each batch: eval mode, no grad, its own dtype/device.

    Its outputs are moved to the student's device (not cast: the loss upcasts per chunk, so a
    bf16 teacher stays half the size in transit). Nothing keeps its activations alive: the
    returned tensors are the only references, and the loop drops them right after the loss.
    """

    def __init__(self, adapter: ModelAdapter, device: torch.device, return_hidden: bool = True):
        self.adapter = adapter
        self.device = device
        self.return_hidden = return_hidden
        adapter.model.eval()
        adapter.model.requires_grad_(False)

    def outputs(self, records: Sequence[Record], batch: RenderedBatch | None = None) -> ResponseOutputs:
        """``batch``: the records already rendered by this teacher's processor (in a DataLoader
        worker, on its device); rendered here otherwise."""
        with torch.no_grad():
            out = self.adapter.response_outputs(batch if batch is not None else records, return_hidden=self.return_hidden)
        return out.to(device=self.device)


class CachedTeacher:
    """The teacher's top-k + tail read from an offline cache (``taid-vlm teacher-cache``).

    No teacher model is loaded. Every record of the run is checked up front (present, same
    content), and its content hash is kept by id: the loop may trim a prompt to ``max_length``
    later, and the cache was keyed on the record as loaded, before any trimming.
    """

    def __init__(self, cache: TeacherCache, records: Sequence[Record], device: torch.device):
        self.cache = cache
        self.device = device
        self.hashes = {r.id: record_hash(r) for r in records}
        for record in records:
            cache.entry(record, self.hashes[record.id])

    def outputs(self, records: Sequence[Record]) -> ResponseOutputs:
        missing = [r.id for r in records if r.id not in self.hashes]
        if missing:
            raise CacheError(f"record {missing[0]!r} was not checked against the teacher cache {self.cache.root}; "
                             "on-policy samples cannot be scored by a cache (use a live teacher)")
        token_ids, record_index, topk = self.cache.rows(list(records), self.hashes)
        return ResponseOutputs(token_ids, record_index, topk=topk,
                               cached_vocab_size=self.cache.teacher["vocab_size"]).to(device=self.device)


def open_teacher_cache(path: str, teacher: str | None, max_length: int | None, responses: str,
                       records: Sequence[Record]) -> tuple[TeacherCache, list[Record]]:
    """Open a cache for a run and check it against the run's settings; with ``responses=teacher``
    the records come back with the teacher's answers stored in the cache."""
    cache = TeacherCache(path)
    cache.check_run(teacher, max_length)
    if responses == "teacher":
        return cache, cache.with_teacher_responses(list(records))
    if cache.settings.responses == "teacher":
        raise CacheError(f"teacher cache {path} scores the teacher's own answers (built with --responses teacher); "
                         "run with responses=teacher, or rebuild the cache with --responses data")
    return cache, list(records)


class ServedTeacher:
    """The teacher's top-k + tail from a vLLM server (``taid-vlm teacher-server``), per batch.

    ``adapter`` is the teacher's weightless adapter: the DataLoader workers render its inputs, and
    the server is sent exactly those token ids.
    """

    def __init__(self, served: ServedModel, device: torch.device):
        self.served = served
        self.adapter = served.adapter
        self.device = device

    def outputs(self, records: Sequence[Record], batch: RenderedBatch | None = None) -> ResponseOutputs:
        token_ids, record_index, topk = self.served.score(records, batch)
        return ResponseOutputs(token_ids, record_index, topk=topk, cached_vocab_size=self.served.vocab_rows).to(device=self.device)


TEACHER_TAG = "teacher"  # the record field (``meta``) that names a record's teacher among ``teachers``


def teacher_tag(record: Record, tags: Sequence[str]) -> str:
    tag = record.meta.get(TEACHER_TAG)
    if tag is None or str(tag) not in tags:
        where = record.meta.get("source", "<memory>")
        raise CacheError(f"{where}: record {record.id!r} has teacher tag {tag!r}, which teachers does not name "
                         f"({', '.join(sorted(tags))}); tag every record with one of them (a \"teacher\" field)")
    return str(tag)


def routes(records: Sequence[Record], tags: Sequence[str]) -> dict[str, list[int]]:
    """Tag -> positions of the batch's records with that tag (tags in ``tags`` order, empty ones left out)."""
    groups: dict[str, list[int]] = {tag: [] for tag in tags}
    for i, record in enumerate(records):
        groups[teacher_tag(record, tags)].append(i)
    return {tag: positions for tag, positions in groups.items() if positions}


def select_records(out: ResponseOutputs, positions: Sequence[int]) -> ResponseOutputs:
    """The rows of the records at ``positions`` (renumbered 0..len-1 in that order)."""
    index = out.record_index
    keep = torch.zeros_like(index, dtype=torch.bool)
    renumber = torch.full((int(index.max()) + 1 if index.numel() else 1,), -1, dtype=torch.long, device=index.device)
    for new, old in enumerate(positions):
        keep |= index == old
        if old < renumber.numel():
            renumber[old] = new
    pick = lambda t: None if t is None else t[keep]  # noqa: E731
    return ResponseOutputs(out.token_ids[keep], renumber[index[keep]], hidden=pick(out.hidden), head_weight=out.head_weight,
                           head_bias=out.head_bias, logits=pick(out.logits),
                           topk=out.topk.select(keep) if out.topk is not None else None,
                           cached_vocab_size=out.cached_vocab_size, softcap=out.softcap)
