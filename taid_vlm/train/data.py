"""Training data off the critical path: records rendered for student AND teacher in DataLoader workers.

Rendering a multimodal record (opening images, running two processors, finding the response
spans) costs as much as a small model's step; done inside the step it leaves the GPU idle. Here
a ``StepSampler`` says which records each micro-batch holds, a ``RenderCollator`` turns them
into tensors for both models in a worker process, and the loop only moves finished tensors to
the device.

Exact resume: the order is the one ``BatchStream`` defines (one permutation per epoch drawn
from ``seed + epoch`` alone, rank r takes its slice of each global batch), and the position
(epoch, records consumed) advances once per micro-batch the LOOP takes, not per batch a worker
prefetched, so a checkpoint's position never counts batches that were rendered but not trained.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import DataError, Record, SkippedRecordsWarning, load_image
from ..data.truncate import fit_prompt
from ..models import ModelAdapter
from ..models.adapter import RenderedBatch
from .batches import BatchStream
from .stopping import ignore_stop_signals


@dataclass
class MicroBatch:
    """One micro-batch: its records and their renderings (CPU tensors until ``to``)."""

    records: list[Record]
    student: RenderedBatch
    teacher: RenderedBatch | None

    def to(self, student_device: torch.device, teacher_device: torch.device | None,
           student_dtype: torch.dtype | None = None, teacher_dtype: torch.dtype | None = None) -> "MicroBatch":
        teacher = self.teacher.to(teacher_device, teacher_dtype) if self.teacher is not None else None
        return MicroBatch(self.records, self.student.to(student_device, student_dtype), teacher)


class RecordDataset(Dataset):
    """Record ``index`` with its images opened (decoded here, in the worker that renders it).

    A record that cannot be built or whose image cannot be read (a table builds records only now,
    data/table.py): with ``skip_bad`` a warning names it and the next good record of the set takes its
    place (the same one on every run, so a resume stays exact); without, a ``BadRecord`` carries the
    error to the loop, which stops with it.
    """

    def __init__(self, records: Sequence[Record], skip_bad: bool = False):
        self.records, self.skip_bad = records, skip_bad

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> "Record | BadRecord":
        for offset in range(len(self.records)):
            try:
                record = self.records[(index + offset) % len(self.records)]
                images = [load_image(image) for image in record.images]
            except DataError as e:
                error = e
            except OSError as e:  # load_image names the file
                error = DataError(f"{record.meta.get('source', '<memory>')} (record {record.id!r})", str(e), BAD_IMAGE_FIX)
            else:
                return replace(record, images=images) if images else record
            if not self.skip_bad:
                return BadRecord(error.where, error.problem, error.fix)
            warnings.warn(f"skipped a bad record: {error}; the next record takes its place", SkippedRecordsWarning,
                          stacklevel=2)
        return BadRecord(str(getattr(self.records, "path", "the data")), "every record is bad", "check the data")


BAD_IMAGE_FIX = "replace the file, or pass --skip-bad to skip such records (the run continues with --resume)"


@dataclass
class BadRecord:
    """A record that failed in a DataLoader worker, carried to the loop to be raised there."""

    where: str
    problem: str
    fix: str

    def error(self) -> DataError:
        return DataError(self.where, self.problem, self.fix)


@dataclass
class StreamPosition:
    """Where the stream stands: the epoch and the records of its permutation consumed (all ranks)."""

    epoch: int
    position: int

    def advance(self, num_records: int, global_batch: int) -> tuple[int, int]:
        """Move past one global batch; returns (epoch, start) of the batch taken."""
        if self.position + global_batch > num_records:  # an incomplete tail starts a new epoch
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position
        self.position += global_batch
        return self.epoch, start


class StepSampler(Sampler[list[int]]):
    """Endless batch sampler: this rank's record indices of each global batch, from a position on."""

    def __init__(self, num_records: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 epoch: int = 0, position: int = 0):
        self._stream = BatchStream(range(num_records), batch_size, seed, rank, world_size, epoch, position)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self._stream.next_batch()


class RenderCollator:
    """Records -> ``MicroBatch`` rendered by the student's processor and, when given, the teacher's.

    Runs in DataLoader workers: it renders on the CPU and never touches the models' weights.
    ``max_length`` trims prompts (never responses) so both renderings fit.
    """

    def __init__(self, student: ModelAdapter, teacher: ModelAdapter | None, max_length: int | None = None):
        self.student, self.teacher, self.max_length = student, teacher, max_length

    def __call__(self, records: list[Record]) -> "MicroBatch | BadRecord":
        bad = next((r for r in records if isinstance(r, BadRecord)), None)
        if bad is not None:
            return bad
        if self.max_length:
            records = [fit_prompt(r, self._longest, self.max_length) for r in records]
        student = self.student.render(records, max_length=self.max_length, on_device=False)
        teacher = self.teacher.render(records, max_length=self.max_length, on_device=False) if self.teacher else None
        return MicroBatch(list(records), student, teacher)

    def _longest(self, record: Record) -> int:
        lengths = [self.student.render([record], on_device=False).input_ids.shape[1]]
        if self.teacher is not None:
            lengths.append(self.teacher.render([record], on_device=False).input_ids.shape[1])
        return max(lengths)


class MicroBatches:
    """The loop's view: ``next()`` gives the next rendered micro-batch; ``epoch``/``position``
    are those of the micro-batches taken so far (what a checkpoint stores)."""

    def __init__(self, records: Sequence[Record], collator: RenderCollator, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, epoch: int = 0, position: int = 0, num_workers: int = 0,
                 skip_bad: bool = False):
        sampler = StepSampler(len(records), batch_size, seed, rank, world_size, epoch, position)
        self._taken = StreamPosition(epoch, position)
        self._num_records, self._global_batch = len(records), batch_size * world_size
        self.loader = DataLoader(RecordDataset(records, skip_bad), batch_sampler=sampler, collate_fn=collator,
                                 num_workers=num_workers, persistent_workers=num_workers > 0,
                                 prefetch_factor=2 if num_workers > 0 else None,
                                 worker_init_fn=ignore_stop_signals if num_workers > 0 else None)
        self._iterator: Iterator[MicroBatch] | None = None

    @property
    def epoch(self) -> int:
        return self._taken.epoch

    @property
    def position(self) -> int:
        return self._taken.position

    def next(self) -> MicroBatch:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        if isinstance(batch, BadRecord):
            raise batch.error()
        self._taken.advance(self._num_records, self._global_batch)
        return batch

    def close(self) -> None:
        """Stop the worker processes (they would otherwise live until the loader is collected)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


class StreamBatches:
    """The loop's view of a streamed set (no length, no random access), with ``MicroBatches``' interface.

    ``open_stream(epoch, position)`` gives the records of an epoch's order (a seeded shuffle buffer,
    ``seed + epoch``) from ``position`` on. A global batch is the next ``batch_size * world_size``
    records of that order and rank r renders its slice; an incomplete tail starts the next epoch, as
    for a map-style set, and ``epoch``/``position`` are what a checkpoint stores. Rendering runs in
    this process (a stream has no index a DataLoader worker could be given).
    """

    def __init__(self, open_stream: Callable[[int, int], Iterator[Record]], collator: RenderCollator,
                 batch_size: int, rank: int = 0, world_size: int = 1, epoch: int = 0, position: int = 0,
                 skip_bad: bool = False):
        self._open, self.collator, self.skip_bad = open_stream, collator, skip_bad
        self.batch_size, self.rank, self.global_batch = batch_size, rank, batch_size * world_size
        self.epoch, self.position = epoch, position
        self._rows: Iterator[Record] | None = None

    def next(self) -> MicroBatch:
        if self._rows is None:
            self._rows = self._open(self.epoch, self.position)
        chunk = list(itertools.islice(self._rows, self.global_batch))
        if len(chunk) < self.global_batch:  # the epoch's end
            if self.position == 0:
                raise DataError("the stream", f"{len(chunk)} records cannot fill one global batch of "
                                f"{self.global_batch}", "lower batch_size or add data")
            self.close()
            self.epoch, self.position = self.epoch + 1, 0
            return self.next()
        self.position += self.global_batch
        mine = RecordDataset(chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size], self.skip_bad)
        batch = self.collator([mine[i] for i in range(len(mine))])
        if isinstance(batch, BadRecord):
            raise batch.error()
        return batch

    def close(self) -> None:
        rows, self._rows = self._rows, None
        if rows is not None and hasattr(rows, "close"):
            rows.close()
