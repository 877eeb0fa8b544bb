"""Metrics for plain-text responses (the LLM side of distillation).

ROUGE-L and exact match follow the conventions most LLM papers report with: ROUGE-L F1 on
lower-cased alphanumeric tokens (Google's rouge-score tokenisation, no stemming), best over the
references; exact match after SQuAD-style normalisation. Perplexity is aggregated from summed
token NLLs so it does not depend on how the harness batched the references.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

_TOKEN = re.compile(r"[a-z0-9]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def rouge_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence of two token lists (ROUGE-L), in O(len(a) * len(b))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str) or not references:
        raise ValueError(f"references must be a non-empty list of strings, got {references!r}")


def rouge_l(prediction: str | None, references: Sequence[str], beta: float = 1.0) -> float:
    """ROUGE-L F-measure in [0, 1] of one prediction, the best over its references.

    ``beta`` weights recall (1.0 = F1, the rouge-score default; COCO captions use 1.2).
    An empty or missing prediction scores 0.
    """
    _check_references(references)
    pred = rouge_tokens(prediction or "")
    best = 0.0
    for reference in references:
        ref = rouge_tokens(reference)
        lcs = lcs_length(pred, ref) if pred and ref else 0
        if lcs == 0:
            continue
        precision, recall = lcs / len(pred), lcs / len(ref)
        f = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
        best = max(best, f)
    return best


def normalize_text(text: str) -> str:
    """SQuAD-style: lower-case, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0 (an empty
    prediction never matches, even an empty-after-normalisation reference)."""
    _check_references(references)
    if prediction is None:
        return 0.0
    pred = normalize_text(prediction)
    return float(bool(pred) and any(pred == normalize_text(r) for r in references))


def perplexity_from_nll(total_nll: float, n_tokens: int) -> float:
    """exp(mean token NLL in nats). ``total_nll`` is the sum over all ``n_tokens`` scored tokens
    (summing first keeps the result independent of batch sizes); overflow gives inf."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens <= 0:
        raise ValueError(f"perplexity needs a positive token count, got n_tokens={n_tokens!r}")
    if math.isnan(total_nll) or total_nll < 0:
        raise ValueError(f"total_nll must be a non-negative sum of token NLLs, got {total_nll!r}")
    mean = total_nll / n_tokens
    return math.exp(mean) if mean < 709.0 else math.inf  # exp(709.8) overflows a float


@dataclass
class TextSample:
    id: str
    prediction: str | None
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def score_text_samples(samples: Iterable[TextSample]) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Per-sample {rouge_l, exact_match} in [0, 1] and a summary x100 (2 decimals).

    Empty or missing predictions score 0 and are counted in ``n_empty``, never dropped.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("no text samples to score; the evaluation set is empty")
    per_sample = []
    for s in samples:
        if isinstance(s.references, str) or not s.references:
            raise ValueError(f"text sample {s.id!r} has no references; every sample needs at least one")
        per_sample.append(
            {"rouge_l": rouge_l(s.prediction, s.references), "exact_match": exact_match(s.prediction, s.references)}
        )
    n = len(samples)
    summary = {
        "rouge_l": round(100.0 * sum(p["rouge_l"] for p in per_sample) / n, 2),
        "exact_match": round(100.0 * sum(p["exact_match"] for p in per_sample) / n, 2),
        "n": n,
        "n_empty": sum(s.prediction is None or not s.prediction.strip() for s in samples),
    }
    return per_sample, summary
