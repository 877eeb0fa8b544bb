"""Run a model over evaluation items: batched greedy answers, and reference log-likelihoods.

Answers come from ``ModelAdapter.generate`` (left padding, greedy), so the harness asks exactly
the way training rendered prompts. Batch composition must not change an answer: padding is
masked and positions follow the attention mask, so batch 1 and batch 8 give the same tokens
(tested on tiny models; bf16 kernels on a GPU can still break exact ties differently).

Throughput needs the number of tokens each answer took, which decoded strings do not give:
a streamer (transformers' documented hook that sees every generated token) counts them per row
up to and including the stop token, and notes answers cut off by ``max_new_tokens``.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import torch
from torch.nn import functional as F
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from ..data.records import Record
from ..models.adapter import ModelAdapter, RenderedBatch
from ..teacher_server import ServedModel
from .errors import EvalError

Progress = Callable[[int, int], None]  # (items done, items in all)


@dataclass
class GenerationRun:
    predictions: list[str]
    seconds: float  # wall time inside generate, all batches
    generated_tokens: int | None  # None when the model's generate did not stream its tokens
    n_hit_limit: int | None  # answers that reached max_new_tokens without a stop token

    @property
    def items_per_s(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else math.inf

    @property
    def tokens_per_s(self) -> float | None:
        if self.generated_tokens is None:
            return None
        return self.generated_tokens / self.seconds if self.seconds > 0 else math.inf


class NonFiniteLogits(UserWarning):
    """A model produced NaN or infinite logits: its answers or scores there mean nothing."""


class NonFiniteWatch(LogitsProcessor):
    """Notes whether any decoding step saw a non-finite logit; leaves the scores untouched."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.seen and not bool(torch.isfinite(scores).all()):
            self.seen = True
        return scores


def warn_non_finite(name: str, batch: Sequence[Record], what: str) -> None:
    warnings.warn(
        f"model {name!r} produced non-finite logits while {what} record(s) {_ids(batch)}; those results are "
        "meaningless. Check the checkpoint and its dtype (float16 overflows; try --dtype float32)",
        NonFiniteLogits, stacklevel=3,
    )


class TokenCounter(BaseStreamer):
    """Counts each row's generated tokens up to and including its first stop token.

    ``generate`` first hands over the prompt, then one token per row per step; rows that have
    stopped keep receiving padding, which is not counted.
    """

    def __init__(self, stop_token_ids: Sequence[int]):
        self.stop_ids = torch.tensor(sorted(stop_token_ids), dtype=torch.long)
        self.prompt_seen = False
        self.counts: torch.Tensor | None = None
        self.stopped: torch.Tensor | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(-1).long()
        if self.counts is None:
            self.counts = torch.zeros(len(tokens), dtype=torch.long)
            self.stopped = torch.zeros(len(tokens), dtype=torch.bool)
        assert self.stopped is not None
        active = ~self.stopped
        self.counts += active.long()
        self.stopped |= active & torch.isin(tokens, self.stop_ids)

    def end(self) -> None:
        pass


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off and no autograd while scoring, and the caller's mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def generate_answers(
    adapter: ModelAdapter,
    prompts: Sequence[Record],
    name: str,
    batch_size: int,
    max_new_tokens: int,
    progress: Progress | None = None,
) -> GenerationRun:
    """Greedy answers in input order; any failure becomes an EvalError naming the model and records."""
    if isinstance(adapter, ServedModel):
        return served_answers(adapter, prompts, name, batch_size, max_new_tokens, progress)
    predictions: list[str] = []
    seconds, tokens, hit_limit, streamed = 0.0, 0, 0, True
    for batch in batches(prompts, batch_size):
        counter = TokenCounter(adapter.stop_token_ids)
        watch = NonFiniteWatch()
        start = time.perf_counter()
        try:
            with eval_mode(adapter.model):
                answers = adapter.generate(batch, max_new_tokens=max_new_tokens, streamer=counter,
                                           logits_processor=LogitsProcessorList([watch]))
        except Exception as e:  # noqa: BLE001 - any failure is re-raised naming the model and records
            raise EvalError(
                f"model {name!r} could not generate answers for record(s) {_ids(batch)}: "
                f"{type(e).__name__}: {e}"
            ) from e
        seconds += time.perf_counter() - start
        if watch.seen:
            warn_non_finite(name, batch, "answering")
        _check_answers(answers, batch, name)
        predictions.extend(answers)
        if counter.counts is None:
            streamed = False
        else:
            tokens += int(counter.counts.sum())
            hit_limit += int((~counter.stopped & (counter.counts >= max_new_tokens)).sum())
        if progress is not None:
            progress(len(predictions), len(prompts))
    if not streamed:
        return GenerationRun(predictions, seconds, None, None)
    return GenerationRun(predictions, seconds, tokens, hit_limit)


def served_answers(served: ServedModel, prompts: Sequence[Record], name: str, batch_size: int, max_new_tokens: int,
                   progress: Progress | None = None) -> GenerationRun:
    """``generate_answers`` on a vLLM server: the same prompts (the model's own rendering, sent as
    token ids), greedy, the same stop tokens, decoded by the same tokenizer; tokens counted from
    the ids the server returns (stop token included, as ``TokenCounter`` counts)."""
    predictions: list[str] = []
    seconds, tokens, hit_limit = 0.0, 0, 0
    stops = set(served.stop_token_ids)
    for batch in batches(prompts, batch_size):
        start = time.perf_counter()
        try:
            ids = served.generate_ids(batch, max_new_tokens=max_new_tokens)
        except Exception as e:  # noqa: BLE001 - re-raised naming the model and records
            raise EvalError(f"model {name!r} (vLLM server {served.url}) could not answer record(s) {_ids(batch)}: "
                            f"{type(e).__name__}: {e}") from e
        seconds += time.perf_counter() - start
        predictions.extend(served.tokenizer.batch_decode(ids, skip_special_tokens=True))
        tokens += sum(len(row) for row in ids)
        hit_limit += sum(1 for row in ids if len(row) >= max_new_tokens and not stops.intersection(row))
        if progress is not None:
            progress(len(predictions), len(prompts))
    return GenerationRun(predictions, seconds, tokens, hit_limit)


def _check_answers(answers: object, batch: Sequence[Record], name: str) -> None:
    if not isinstance(answers, list) or len(answers) != len(batch) or not all(isinstance(a, str) for a in answers):
        raise EvalError(
            f"model {name!r}: generate() must return one string per record; for {len(batch)} record(s) "
            f"{_ids(batch)} it returned {answers!r:.200}"
        )


def _ids(batch: Sequence[Record]) -> str:
    ids = [r.id for r in batch]
    return ", ".join(repr(i) for i in ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")


# ---- reference likelihood (the text task's perplexity) ------------------------------------------------


def reference_nll(
    adapter: ModelAdapter, targets: Sequence[Record], name: str, batch_size: int
) -> list[tuple[float, int]]:
    """Per target record: (summed NLL in nats, token count) of its LAST assistant turn.

    The turn's end-of-turn marker counts as a token (a model must predict where the answer
    stops). Earlier assistant turns of a multi-turn record are context, not scored.
    """
    out: list[tuple[float, int]] = []
    for batch in batches(targets, batch_size):
        if isinstance(adapter, ServedModel):  # the server's log-prob of each reference token
            rendered = adapter.render(batch, on_device=False)
            rendered = replace(rendered, response_mask=last_run(rendered.response_mask))
            token_ids, index, logprobs = adapter.token_logprobs(batch, rendered)
            out.extend(_sums(-logprobs.double(), index, len(batch), rendered))
            continue
        try:
            with eval_mode(adapter.model):
                rendered = adapter.render(batch)
                rendered = replace(rendered, response_mask=last_run(rendered.response_mask))
                outputs = adapter.response_outputs(rendered, return_hidden=False)
        except Exception as e:  # noqa: BLE001 - re-raised naming the model and records
            raise EvalError(
                f"model {name!r} could not score the references of record(s) {_ids(batch)}: {type(e).__name__}: {e}"
            ) from e
        if not bool(torch.isfinite(outputs.logits).all()):
            warn_non_finite(name, batch, "scoring the references of")
        out.extend(_per_record_nll(outputs.logits, outputs.token_ids, outputs.record_index, len(batch), rendered))
    return out


def last_run(mask: torch.Tensor) -> torch.Tensor:
    """Keep only the last contiguous run of True in each row (the last assistant turn's tokens)."""
    out = torch.zeros_like(mask)
    for row in range(mask.shape[0]):
        positions = mask[row].nonzero().squeeze(1).tolist()
        if not positions:
            continue
        start = len(positions) - 1
        while start > 0 and positions[start - 1] == positions[start] - 1:
            start -= 1
        out[row, positions[start:]] = True
    return out


def _per_record_nll(
    logits: torch.Tensor, token_ids: torch.Tensor, record_index: torch.Tensor, n: int, rendered: RenderedBatch
) -> list[tuple[float, int]]:
    nll = F.cross_entropy(logits.float(), token_ids.to(logits.device), reduction="none").double().cpu()
    return _sums(nll, record_index, n, rendered)


def _sums(nll: torch.Tensor, record_index: torch.Tensor, n: int, rendered: RenderedBatch) -> list[tuple[float, int]]:
    index = record_index.cpu()
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, index, nll)
    counts = torch.bincount(index, minlength=n)
    empty = [rendered.record_ids[i] for i in range(n) if counts[i] == 0]
    if empty:
        raise EvalError(f"record(s) {empty[:4]} have no reference tokens to score")
    return [(float(s), int(c)) for s, c in zip(sums, counts)]
