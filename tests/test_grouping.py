"""Length grouping: the same records per window and epoch, steps of similar lengths, the same
order on every rank and after a resume, lengths measured lazily, one epoch's loss unchanged;
a streamed set grouped a window at a time the same way."""

from __future__ import annotations

import random

import pytest
import torch

from taid_vlm.data.records import Record
from taid_vlm.models import adapt
from taid_vlm.testing.tiny import build_tiny
from taid_vlm.train.batches import BatchStream
from taid_vlm.train.data import MicroBatches, RenderCollator, StreamBatches
from taid_vlm.train.grouping import LengthGrouping
from taid_vlm.train.objective import training_loss

N = 53
_RNG = random.Random(7)
LENGTHS = [_RNG.randint(5, 500) for _ in range(N)]


def _stream(grouping_window, batch_size=2, world_size=1, rank=0, accum=2, epoch=0, position=0, measured=None):
    grouping = None
    if grouping_window:
        def measure(ids):
            if measured is not None:
                measured.extend(ids)
            return [LENGTHS[i] for i in ids]

        grouping = LengthGrouping(N, grouping_window, batch_size * world_size * accum, measure)
    return BatchStream(range(N), batch_size, seed=11, rank=rank, world_size=world_size, epoch=epoch, position=position,
                       grouping=grouping)


def _take(stream, n):
    return [stream.next_batch() for _ in range(n)]


def test_an_epoch_holds_the_same_records_and_steps_hold_similar_lengths():
    per_epoch = N // 4  # global batches (= steps) of 4 records; one record is the dropped tail
    plain = _take(_stream(None, batch_size=4, accum=1), per_epoch * 2)
    grouped = _take(_stream(3, batch_size=4, accum=1), per_epoch * 2)
    for epoch in range(2):
        window = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        assert sorted(sum(plain[window], [])) == sorted(sum(grouped[window], []))  # the same records, dropped tail too
    assert plain != grouped
    spread = lambda batches: sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches)
    assert spread(grouped) < 0.5 * spread(plain)
    # every window of 3 steps x 4 records holds the permutation's window
    for w in range(per_epoch // 3):
        assert sorted(sum(plain[3 * w : 3 * w + 3], [])) == sorted(sum(grouped[3 * w : 3 * w + 3], []))


def test_a_step_holds_the_same_records_however_it_is_split_across_micro_batches_and_ranks():
    one = _take(_stream(4, batch_size=4, accum=1), 12)
    split = _take(_stream(4, batch_size=2, accum=2), 24)
    ranks = [_take(_stream(4, batch_size=1, world_size=2, rank=r, accum=2), 24) for r in range(2)]
    for s in range(12):
        assert sorted(one[s]) == sorted(split[2 * s] + split[2 * s + 1])
        assert sorted(one[s]) == sorted(sum((ranks[r][2 * s + k] for r in range(2) for k in range(2)), []))
        lengths = [LENGTHS[i] for i in split[2 * s] + split[2 * s + 1]]
        assert lengths == sorted(lengths)  # micro-batches of a step are consecutive slices of it, by length


def test_a_resumed_stream_continues_exactly_and_lengths_are_measured_a_window_at_a_time():
    measured: list[int] = []
    stream = _stream(3, measured=measured)
    first = _take(stream, 5)
    assert len(measured) == 12 and len(set(measured)) == 12  # one window of 3 steps x 4 records, once each
    rest = _take(stream, 40)  # into the second epoch
    resumed = _stream(3, epoch=0, position=5 * 2)
    assert _take(resumed, 40) == rest and first == _take(_stream(3), 5)
    assert len(measured) == N  # every record measured once, across epochs
    with pytest.raises(ValueError, match="not a multiple"):
        BatchStream(range(N), 3, seed=0, grouping=LengthGrouping(N, 2, 4, lambda ids: [1] * len(ids)))


class _LengthsOnly:
    """What StreamBatches asks of a RenderCollator: lengths, and a batch (here the records' numbers)."""

    def __init__(self):
        self.measured: list[int] = []

    def lengths(self, records):
        self.measured += [int(r.id) for r in records]
        return [LENGTHS[int(r.id)] for r in records]

    def __call__(self, records):
        return [int(r.id) for r in records]


def _open_stream(epoch: int, position: int):
    """A streamed set: each epoch's order (a seeded shuffle), read from ``position`` on."""
    order = torch.randperm(N, generator=torch.Generator().manual_seed(100 + epoch)).tolist()
    return iter([Record(str(i), [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) for i in order[position:]])


def _streamed(group_window, epoch=0, position=0, batch_size=2, world_size=1, rank=0, collator=None):
    return StreamBatches(_open_stream, collator or _LengthsOnly(), batch_size, rank, world_size, epoch, position,
                         group_window=group_window, grad_accum=2, seed=11)


def test_a_streamed_set_is_grouped_a_window_at_a_time_and_resumes_mid_window_exactly():
    steps = N // 4  # one epoch: 4 records a step (2 micro-batches of 2); one record is the dropped tail
    unsorted = _streamed(None)
    plain = [unsorted.next() for _ in range(2 * steps)]
    collator = _LengthsOnly()
    stream = _streamed(3, collator=collator)
    grouped = [stream.next() for _ in range(2 * steps)]
    for w in range(steps // 3):  # each window of 3 steps holds the stream's next 12 records
        assert sorted(sum(plain[6 * w : 6 * w + 6], [])) == sorted(sum(grouped[6 * w : 6 * w + 6], []))
    assert sorted(sum(plain, [])) == sorted(sum(grouped, []))
    for s in range(steps):  # a step's micro-batches: consecutive slices of its records sorted by length
        lengths = [LENGTHS[i] for i in grouped[2 * s] + grouped[2 * s + 1]]
        assert lengths == sorted(lengths)
    assert grouped != plain and sorted(collator.measured) == sorted(sum(grouped, []))  # each once, a window at a time
    resumed = _streamed(3, epoch=0, position=4 * 4)  # after step 4: inside the second window
    assert [resumed.next() for _ in range(2 * steps - 8)] == grouped[8:]
    assert stream.next() == _streamed(3, epoch=1).next() and stream.epoch == 1  # the tail dropped, epoch 1's first window
    ranks = [_streamed(3, batch_size=1, world_size=2, rank=r) for r in range(2)]
    first = [[ranks[r].next() for _ in range(2)] for r in range(2)]  # one step on each rank
    assert sorted(sum(first[0] + first[1], [])) == sorted(grouped[0] + grouped[1])


def _records() -> list[Record]:
    rng = random.Random(3)
    words = "red blue green circle square triangle small large the a is on".split()
    return [Record(f"r{i}", [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 40)))},
                             {"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 30)))}])
            for i in range(24)]


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_one_epochs_loss_is_unchanged_by_grouping(pack):
    """The token-weighted loss over one epoch (what every record contributes) with and without
    grouping, on the real collator, with packed rows too."""
    student = adapt(*build_tiny("qwen2", seed=2), role="student")
    teacher = adapt(*build_tiny("qwen2", hidden_size=32, seed=1), role="teacher")
    records = _records()
    collator = RenderCollator(student, teacher, pack=pack)
    estimates = collator.lengths(records)
    exact = [max(m.render([r]).input_ids.shape[1] for m in (student, teacher)) for r in records]
    assert estimates == exact  # text records: the estimate is the rendered length

    def epoch_loss(group_window):
        data = MicroBatches(records, collator, batch_size=4, seed=5, group_window=group_window, grad_accum=2)
        total, tokens, seen = 0.0, 0, []
        with torch.no_grad():
            for _ in range(len(records) // 4):
                mb = data.next()
                s_out, t_out = student.response_outputs(mb.student), teacher.response_outputs(mb.teacher)
                n = mb.student.num_response_tokens
                loss = training_loss("taid", s_out, t_out, num_tokens=n, params={"t": 0.5}).total
                total, tokens = total + float(loss) * n, tokens + n
                seen += [r.id for r in mb.records]
        data.close()
        return total / tokens, seen

    plain, plain_ids = epoch_loss(None)
    grouped, grouped_ids = epoch_loss(2)
    assert plain_ids != grouped_ids and sorted(plain_ids) == sorted(grouped_ids)
    assert grouped == pytest.approx(plain, rel=1e-6)
