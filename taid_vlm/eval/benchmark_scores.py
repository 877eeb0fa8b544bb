"""A benchmark's scores: the task's metric plus the breakdowns the benchmark reports.

VQA sets add accuracy per annotated group (VQAv2 answer types, GQA question types, VizWiz
answerability) and, for VizWiz, how well a model abstains; NoCaps scores CIDEr per domain, each
domain on its own images as its evaluation server does. Unlabelled test splits get predictions
only. ``score_results_file`` applies the same rules to a results file made elsewhere.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .benchmarks import Benchmark, BenchmarkSet, Submission, benchmark_vqa_rules, results_format
from .caption_metrics import caption_scores
from .errors import EvalError
from .items import EvalItem
from .scoring import TaskScores, score_captions, score_vqa
from .submissions import submission_id
from .vqa_metrics import ANSWER_TYPES, normalize_answer

VIZWIZ_UNANSWERABLE = "unanswerable"  # the answer VizWiz annotators give when a question cannot be answered


def score_benchmark(eval_set: BenchmarkSet, predictions: Sequence[str], caption_backend: str = "auto",
                    vqa_rules: str | None = None) -> TaskScores:
    """The task's scores plus the benchmark's own breakdowns; predictions only for an unlabelled split."""
    benchmark = eval_set.benchmark
    assert benchmark is not None
    if not eval_set.scored:
        return _unscored(eval_set, predictions)
    if benchmark.task == "vqa":
        scores = score_vqa(eval_set.items, predictions, benchmark_vqa_rules(benchmark.name, vqa_rules))
        _vqa_breakdowns(eval_set.items, predictions, scores, benchmark)
    else:
        scores = score_captions(eval_set.items, predictions, caption_backend)
        _caption_breakdowns(eval_set.items, predictions, scores, benchmark, caption_backend)
    return scores


def _unscored(eval_set: BenchmarkSet, predictions: Sequence[str]) -> TaskScores:
    headline = "accuracy" if eval_set.task == "vqa" else "CIDEr"
    empty = [not (p or "").strip() for p in predictions]
    rows = [{"id": item.id, "prediction": pred, "references": [], "score": None, "empty": e}
            for item, pred, e in zip(eval_set.items, predictions, empty, strict=True)]
    return TaskScores({headline: None, "n_empty": sum(empty)}, rows, None,
                      {"scored": False, "why": "the file holds no labels (a test split); see the submission file"})


def _vqa_breakdowns(items: Sequence[EvalItem], predictions: Sequence[str], scores: TaskScores,
                    benchmark: Benchmark) -> None:
    per_item = [row["score"] for row in scores.samples]
    groups = {key: _accuracy_by(items, per_item, key) for key in benchmark.breakdowns}
    scores.extra["benchmark_breakdowns"] = groups
    if benchmark.name == "vizwiz":
        given = groups.get("answer_type", {})
        scores.extra["by_answer_type"] = given  # the annotated types, not ones derived from the answers
        for kind in (*ANSWER_TYPES, VIZWIZ_UNANSWERABLE):  # VizWiz reports its own four types
            scores.metrics[kind] = given.get(kind, {}).get("accuracy")
        scores.metrics.update(unanswerable_handling(items, predictions))


def _accuracy_by(items: Sequence[EvalItem], per_item: Sequence[float], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for item, score in zip(items, per_item):
        value = item.meta.get(key)
        if value is not None:
            groups[str(value)].append(score)
    return {g: {"accuracy": round(100.0 * sum(v) / len(v), 2), "n": len(v)} for g, v in sorted(groups.items())}


def unanswerable_handling(items: Sequence[EvalItem], predictions: Sequence[str]) -> dict[str, float | None]:
    """How well a model says 'unanswerable' exactly when VizWiz marks a question unanswerable (x100).

    Precision: of the questions it called unanswerable, the share that are; recall: of the
    unanswerable ones, the share it called so. None where the denominator is empty, or when the
    data carries no ``answerable`` field (a Hugging Face copy may drop it).
    """
    pairs = [(normalize_answer(p or "") == VIZWIZ_UNANSWERABLE, item.meta.get("answerable"))
             for item, p in zip(items, predictions)]
    if any(answerable is None for _, answerable in pairs):
        return {"unanswerable_precision": None, "unanswerable_recall": None, "unanswerable_f1": None}
    said = sum(s for s, _ in pairs)
    truly = sum(a == 0 for _, a in pairs)
    hits = sum(s and a == 0 for s, a in pairs)
    precision = 100.0 * hits / said if said else None
    recall = 100.0 * hits / truly if truly else None
    f1 = 200.0 * hits / (said + truly) if said + truly else None  # = 2PR / (P + R), defined when either is
    return {k: None if v is None else round(v, 2) for k, v in
            (("unanswerable_precision", precision), ("unanswerable_recall", recall), ("unanswerable_f1", f1))}


def _caption_breakdowns(items: Sequence[EvalItem], predictions: Sequence[str], scores: TaskScores,
                        benchmark: Benchmark, backend: str) -> None:
    """CIDEr per group, each group scored as its own set (document frequencies from its own references)."""
    breakdowns: dict[str, dict[str, Any]] = {}
    for key in benchmark.breakdowns:
        groups: dict[str, list[int]] = defaultdict(list)
        for k, item in enumerate(items):
            if item.meta.get(key) is not None:
                groups[str(item.meta[key])].append(k)
        breakdowns[key] = {}
        for group, ks in sorted(groups.items()):
            result = caption_scores({items[k].id: predictions[k] for k in ks},
                                    {items[k].id: items[k].references for k in ks}, backend=backend)
            breakdowns[key][group] = {"CIDEr": result.get("CIDEr"), "n": len(ks)}
            scores.metrics[f"CIDEr ({group})"] = result.get("CIDEr")
    scores.extra["benchmark_breakdowns"] = breakdowns


def score_results_file(eval_set: BenchmarkSet, path: str | Path, caption_backend: str = "auto",
                       vqa_rules: str | None = None) -> TaskScores:
    """Score a results file in the benchmark's format (``[{question_id, answer}]``, ``[{image_id, caption}]``,
    ...) by the benchmark's rules: predictions from another tool, or a submission file written here.

    Every item needs exactly one prediction; a missing, repeated or unknown id is an error naming the file.
    """
    benchmark = eval_set.benchmark
    assert benchmark is not None
    id_key, answer_key = results_format(benchmark)
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: cannot read the results file ({e}); pass a JSON list of "
                        f"{{{id_key!r}, {answer_key!r}}}") from None
    submission = benchmark.submission or Submission(id_key, answer_key, "")
    wanted = {str(submission_id(item, submission)): k for k, item in enumerate(eval_set.items)}
    predictions: list[str | None] = [None] * len(eval_set.items)
    for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
        if not isinstance(row, dict) or id_key not in row or not isinstance(row.get(answer_key), str):
            raise EvalError(f"{path}[{i}]: expected {{{id_key!r}: id, {answer_key!r}: string}}, got {row!r}")
        k = wanted.get(str(row[id_key]))
        if k is None:
            raise EvalError(f"{path}[{i}]: {id_key} {row[id_key]!r} is not an item of {eval_set.source}")
        if predictions[k] is not None:
            raise EvalError(f"{path}[{i}]: a second prediction for {id_key} {row[id_key]!r}")
        predictions[k] = row[answer_key]
    missing = [eval_set.items[k].id for k, p in enumerate(predictions) if p is None]
    if missing:
        raise EvalError(f"{path}: no prediction for {len(missing)} item(s), e.g. {missing[:3]}; "
                        "every item needs one (an empty string scores 0)")
    return score_benchmark(eval_set, [p or "" for p in predictions], caption_backend, vqa_rules)
