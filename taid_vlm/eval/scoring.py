"""Score one model's answers for a task with the metric modules, and lay out what gets written.

Every item is scored; none is dropped. An empty or unparsable answer scores 0 and is counted
in ``n_empty``. The per-item ``score`` in samples.jsonl is the item's share of the headline
metric: VQA accuracy in [0, 1], CIDEr-D x100 for captions, ROUGE-L F1 in [0, 1] for text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .caption_metrics import caption_scores
from .items import EvalItem
from .text_metrics import TextSample, perplexity_from_nll, score_text_samples
from .vqa_metrics import (
    ANSWER_TYPES, DEFAULT_VQA_RULES, VQASample, answer_type, is_empty_prediction, score_vqa_samples,
)  # fmt: skip

SAMPLE_SCORE = {
    "vqa": "VQA accuracy of the question in [0, 1] (the named rules' human-agreement formula for 10 answers, "
    "otherwise normalised match against any listed answer)",
    "caption": "CIDEr-D of the image x100",
    "text": "ROUGE-L F1 of the answer against the reference in [0, 1]",
}
TEXT_NORMALIZER = "rouge-score tokens / squad exact match"
CAPTION_LABELS = ("backend", "tokenizer", "spice_status", "meteor_status")
CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")


@dataclass
class TaskScores:
    metrics: dict[str, Any]  # flat: numbers (None = not computed) and labels such as the backend
    samples: list[dict[str, Any]]  # one row per item, in item order
    normalizer_version: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # nested breakdowns


def score_vqa(items: Sequence[EvalItem], predictions: Sequence[str], rules: str = DEFAULT_VQA_RULES) -> TaskScores:
    samples = [
        VQASample(item.id, pred, item.references, _given_answer_type(item), item.meta)
        for item, pred in zip(items, predictions, strict=True)
    ]
    result = score_vqa_samples(samples, group_by=("family",), rules=rules)
    summary = result.summary
    metrics: dict[str, Any] = {"accuracy": summary["accuracy"]}
    for kind in ANSWER_TYPES:
        metrics[kind] = summary["by_answer_type"].get(kind, {}).get("accuracy")
    metrics["n_empty"] = summary["n_empty"]
    metrics["vqa_rules"] = rules
    rows = [
        {
            **_row(item, pred, score),
            "family": item.meta.get("family"),
            "answer_type": sample.answer_type or answer_type(sample.answers),
            "empty": is_empty_prediction(pred, rules),
        }
        for item, pred, score, sample in zip(items, predictions, result.scores, samples)
    ]
    extra = {k: summary[k] for k in ("by_answer_type", "by_family", "n_single_reference")}
    return TaskScores(metrics, rows, summary["normalizer_version"], extra)


def score_captions(items: Sequence[EvalItem], predictions: Sequence[str], backend: str = "auto") -> TaskScores:
    result = caption_scores(
        {item.id: pred for item, pred in zip(items, predictions, strict=True)},
        {item.id: item.references for item in items},
        backend=backend,
    )
    metrics: dict[str, Any] = {name: result.get(name) for name in CAPTION_METRICS}
    metrics["n_empty"] = result["n_empty"]
    metrics.update({label: result[label] for label in CAPTION_LABELS if label in result})
    rows = []
    for item, pred in zip(items, predictions):
        each = result["per_sample"][item.id]
        rows.append({**_row(item, pred, each["CIDEr"]), **each, "empty": not pred.strip()})
    return TaskScores(metrics, rows, result["tokenizer"])


def score_text(
    items: Sequence[EvalItem], predictions: Sequence[str], nll: Sequence[tuple[float, int]] | None
) -> TaskScores:
    """ROUGE-L and exact match of the answers; perplexity of the references when ``nll`` is given."""
    samples = [
        TextSample(item.id, pred, item.references, item.meta) for item, pred in zip(items, predictions, strict=True)
    ]
    per_sample, summary = score_text_samples(samples)
    metrics: dict[str, Any] = {"rouge_l": summary["rouge_l"], "exact_match": summary["exact_match"]}
    extra: dict[str, Any] = {}
    if nll is not None:
        total, count = sum(s for s, _ in nll), sum(c for _, c in nll)
        metrics["perplexity"] = perplexity_from_nll(total, count)
        extra["reference_tokens"] = count
    metrics["n_empty"] = summary["n_empty"]
    rows = []
    for k, (item, pred, each) in enumerate(zip(items, predictions, per_sample)):
        row = {**_row(item, pred, each["rouge_l"]), **each, "empty": not pred.strip()}
        if nll is not None:
            row["perplexity"] = perplexity_from_nll(*nll[k])
            row["reference_tokens"] = nll[k][1]
        rows.append(row)
    return TaskScores(metrics, rows, TEXT_NORMALIZER, extra)


def _row(item: EvalItem, prediction: str, score: float) -> dict[str, Any]:
    return {"id": item.id, "prediction": prediction, "references": item.references, "score": score}


def _given_answer_type(item: EvalItem) -> str | None:
    """VQAv2 ships an answer type per question; other sets get one derived from the answers."""
    given = item.meta.get("answer_type")
    return given if given in ANSWER_TYPES else None
