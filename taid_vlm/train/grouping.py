"""Length-grouped batches: records of similar rendered length share a global batch.

A padded micro-batch costs ``records x longest``; grouping by length makes the longest close to
the others. The order stays a shuffle, changed only inside windows:

1. the epoch's permutation (``seed + epoch``, as without grouping) is cut into windows of
   ``window`` optimizer steps (``unit`` = records per step: batch_size x processes x grad_accum);
2. inside a window the records are sorted by length (stable: equal lengths keep the
   permutation's order) and cut into steps, each step's micro-batches consecutive slices of it;
3. the window's steps are shuffled with a generator drawn from (seed, epoch, window).

Every window holds the same records as without grouping, so an epoch trains on the same
records and only their grouping into steps and the steps' order within a window change; how a
step is split into micro-batches and processes does not change which records it holds. The
window's last incomplete step (only the epoch's last window has one) is left where the
permutation put it: the records an epoch drops are the ones it drops without grouping.
Everything depends on (seed, epoch, position) and the records alone, so every rank computes
the same global batches and a resumed run the same order from the checkpoint's position.

Lengths are measured lazily, one window at a time, when the stream first reaches it, and kept
(one int32 per record): a million-record set never renders up front. A length is an estimate
from the chat template's text tokens plus the model's image tokens (``ModelAdapter.length_estimates``):
grouping only needs lengths to be close, exactness never depends on them. A streamed set
(``train/data.py`` ``StreamBatches``) has no permutation to index: it reads one window of the
stream at a time and orders it with ``arrange_window``, the same rule on the window's positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Measure = Callable[[Sequence[int]], Sequence[int]]  # record indices -> their lengths


class LengthGrouping:
    def __init__(self, num_records: int, window: int, unit: int, measure: Measure):
        if window < 1 or unit < 1:
            raise ValueError(f"group_window (steps per window) and the records per step must be >= 1, got {window}, {unit}")
        self.window, self.unit, self._measure = window, unit, measure
        self._lengths = np.full(num_records, -1, dtype=np.int32)

    @property
    def size(self) -> int:
        """Records per window."""
        return self.window * self.unit

    def lengths(self, indices: Sequence[int]) -> np.ndarray:
        """Lengths of ``indices``, measuring those not seen yet."""
        idx = np.asarray(indices, dtype=np.int64)
        todo = idx[self._lengths[idx] < 0]
        if len(todo):
            self._lengths[todo] = np.asarray(self._measure(todo.tolist()), dtype=np.int32)
        return self._lengths[idx]

    def arrange(self, window: Sequence[int], seed: int, epoch: int, number: int) -> list[int]:
        """Window ``number`` of the epoch's permutation, grouped."""
        full = len(window) // self.unit * self.unit
        return [window[i] for i in arrange_window(self.lengths(window[:full]), len(window), self.unit, seed, epoch, number)]


def arrange_window(lengths: Sequence[int], size: int, unit: int, seed: int, epoch: int, number: int) -> list[int]:
    """The order of a window's ``size`` positions: the first ``len(lengths)`` (whole steps of
    ``unit``) sorted by length, cut into steps and the steps shuffled; the rest left in place."""
    full = len(lengths)
    if not full:
        return list(range(size))
    by_length = np.argsort(np.asarray(lengths), kind="stable").tolist()
    steps = [by_length[s : s + unit] for s in range(0, full, unit)]
    g = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + number) % 2**63)
    return [i for s in torch.randperm(len(steps), generator=g).tolist() for i in steps[s]] + list(range(full, size))
