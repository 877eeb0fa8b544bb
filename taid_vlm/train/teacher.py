"""Where the teacher's signal comes from, kept apart from how it is compared.

The loop asks a teacher signal for ``ResponseOutputs`` over a batch of records and never looks
inside: a live model (``LiveTeacher``) or an offline cache of top-k teacher log-probs
(``CachedTeacher``, chosen by the ``teacher_cache`` config key).
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
