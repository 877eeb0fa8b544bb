"""Deterministic, resumable, rank-sharded batches of records.

Each epoch is one permutation of the records drawn from ``seed + epoch`` alone, so the order
does not depend on any RNG state that other code touches. A global batch is
``batch_size * world_size`` consecutive records of the permutation; rank r takes its slice.
The position (epoch, records consumed) is all a checkpoint needs to continue exactly: no batch
is repeated or skipped on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data import Record


class BatchStream:
    def __init__(self, records: Sequence[Record], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 epoch: int = 0, position: int = 0):
        if len(records) < batch_size * world_size:
            raise ValueError(
                f"{len(records)} training records cannot fill one global batch of "
                f"{batch_size} x {world_size} process(es); lower batch_size or add data"
            )
        self.records = records
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = epoch, position
        self._order = self._permutation(epoch)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order, as a tensor (8 bytes a record; a list would take 36)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.records), generator=g)

    def next_batch(self) -> list[Record]:
        """This rank's records of the next global batch (an incomplete tail starts a new epoch)."""
        if self.position + self.global_batch > len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._permutation(self.epoch)
        start = self.position + self.rank * self.batch_size
        batch = [self.records[i] for i in self._order[start : start + self.batch_size].tolist()]
        self.position += self.global_batch
        return batch
