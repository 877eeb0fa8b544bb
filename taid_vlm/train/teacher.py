"""Where the teacher's signal comes from, kept apart from how it is compared.

The loop asks a teacher signal for ``ResponseOutputs`` over a batch of records and never looks
inside: a live model today; an offline cache of teacher logits can slot in with the same method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ..data import Record
from ..models import ModelAdapter
from ..models.adapter import RenderedBatch
from ..models.outputs import ResponseOutputs


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
