"""Fitting a record into a model's maximum length without ever cutting a response.

Distillation compares teacher and student on response tokens, so a truncated response would
silently teach the wrong thing. We therefore trim prompt text only (system and user turns,
oldest turn first, from the start of each turn, whole words at a time, never an ``<image>``
placeholder), and fail with a clear message when even that is not enough. The token counter
is any callable on a Record, so this stays tokenizer-agnostic.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

from .errors import DataError, guarded
from .records import IMAGE_PLACEHOLDER, Record

TokenCounter = Callable[[Record], int]
_WORD = re.compile(r"\S+\s*")


def fit_prompt(record: Record, count_tokens: TokenCounter, max_length: int) -> Record:
    """Return ``record`` if it fits, else a copy with prompt text trimmed until it does.

    Raises DataError naming the record when the responses and image placeholders alone do
    not fit. ``meta['prompt_trimmed_words']`` says how many words were dropped.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if count_tokens(record) <= max_length:
        return record
    messages = [dict(m) for m in record.messages]
    dropped = 0
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        turn = _TurnText(m["content"])

        def fits(k: int) -> bool:
            messages[i]["content"] = turn.without_first(k)
            return count_tokens(record.with_messages(messages)) <= max_length

        if not fits(turn.n_words):
            dropped += turn.n_words
            continue  # this whole turn is not enough: empty it and move on to the next one
        k = _smallest(fits, 0, turn.n_words)
        messages[i]["content"] = turn.without_first(k)
        trimmed = record.with_messages(messages)
        trimmed.meta = {**record.meta, "prompt_trimmed_words": dropped + k}
        return trimmed
    where = f"{record.meta.get('source', '<memory>')} (record {record.id!r})"
    raise DataError(
        where,
        f"does not fit max_length {max_length}: even with all prompt text removed it takes "
        f"{count_tokens(record.with_messages(messages))} tokens (responses and images are never cut)",
        "raise max_length, shorten the responses, split the conversation, or pass skip_bad=True",
    )


def fit_prompts(
    records: Iterable[Record], count_tokens: TokenCounter, max_length: int, *, skip_bad: bool = False,
    source: str = "records",
) -> Iterator[Record]:
    """``fit_prompt`` over many records; with ``skip_bad`` the ones that cannot fit are dropped and counted."""
    return guarded(records, lambda r: fit_prompt(r, count_tokens, max_length), source, skip_bad)


def _smallest(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest k in [lo, hi] with ok(k), given ok(hi) is true and ok is monotone."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class _TurnText:
    """A turn's text as placeholders (kept) and words (droppable from the front)."""

    def __init__(self, content: str):
        self.segments = []  # per text segment between placeholders: (leading whitespace, words)
        for seg in content.split(IMAGE_PLACEHOLDER):
            lead = seg[: len(seg) - len(seg.lstrip())]
            self.segments.append((lead, _WORD.findall(seg)))
        self.n_words = sum(len(words) for _, words in self.segments)
        self.original = content

    def without_first(self, k: int) -> str:
        if k == 0:
            return self.original
        parts = []
        for lead, words in self.segments:
            drop = min(k, len(words))
            k -= drop
            parts.append(lead + "".join(words[drop:]))
        return IMAGE_PLACEHOLDER.join(parts).strip()
