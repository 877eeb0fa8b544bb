"""Prompt truncation: trims prompt words only, never a response or an image placeholder."""

from __future__ import annotations

import pytest

from taid_vlm.data import DataError, Record, SkippedRecordsWarning, fit_prompt, fit_prompts


def words(record: Record) -> int:
    """A stand-in tokenizer: one token per whitespace-separated piece, placeholders included."""
    return sum(len(m["content"].split()) for m in record.messages)


def _record(system: str, first: str, second: str = "and now?") -> Record:
    return Record("r", [
        {"role": "system", "content": system},
        {"role": "user", "content": first},
        {"role": "assistant", "content": "one two three"},
        {"role": "user", "content": second},
        {"role": "assistant", "content": "four five"},
    ], images=["a.png"], meta={"source": "data.jsonl:7"})


def test_fitting_record_is_returned_unchanged():
    record = _record("be brief", "<image> hi")
    assert fit_prompt(record, words, 100) is record


def test_trims_oldest_prompt_text_first_and_exactly_enough():
    record = _record("s1 s2 s3", "<image> u1 u2 u3 u4")  # 3 + 5 + 3 + 2 + 2 = 15 tokens
    fitted = fit_prompt(record, words, 12)
    assert words(fitted) == 12
    assert fitted.messages[0]["content"] == ""  # the system prompt went first
    assert fitted.messages[1]["content"] == "<image> u1 u2 u3 u4"
    assert fitted.meta["prompt_trimmed_words"] == 3 and record.meta.get("prompt_trimmed_words") is None

    fitted = fit_prompt(record, words, 10)
    # Words go from the front of the turn, but the placeholder stays.
    assert fitted.messages[1]["content"] == "<image> u3 u4" and words(fitted) == 10
    assert [m["content"] for m in fitted.messages if m["role"] == "assistant"] == ["one two three", "four five"]


def test_placeholder_after_text_is_kept():
    record = Record("p", [{"role": "user", "content": "long preamble here <image>\nquestion?"},
                          {"role": "assistant", "content": "yes"}], images=["a.png"])
    fitted = fit_prompt(record, words, 3)
    assert fitted.messages[0]["content"] == "<image>\nquestion?"
    fitted.validate()


def test_impossible_fit_names_the_record_and_the_fix():
    record = _record("s", "<image> u")
    with pytest.raises(DataError, match=r"data.jsonl:7 \(record 'r'\).*max_length 5.*Fix: raise max_length"):
        fit_prompt(record, words, 5)


def test_fit_prompts_skips_and_counts_with_skip_bad():
    short = _record("s", "<image> u")  # 10 tokens, at least 8 after trimming
    verbose = Record("verbose", [{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a " * 12}])  # the response alone is 12
    assert [r.id for r in fit_prompts([short, verbose], words, 40)] == ["r", "verbose"]
    with pytest.raises(DataError, match="record 'verbose'"):
        list(fit_prompts([short, verbose], words, 9))
    with pytest.warns(SkippedRecordsWarning, match="skipped 1 bad record"):
        kept = list(fit_prompts([short, verbose], words, 9, skip_bad=True))
    assert [(r.id, words(r)) for r in kept] == [("r", 9)]
