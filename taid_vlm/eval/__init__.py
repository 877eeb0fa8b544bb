"""Evaluation: the field's scoring rules (VQA, COCO captions, text) and the harness that runs models.

``evaluate`` is the entry point (``taid-vlm eval`` on the command line); the metric modules can be
used on their own. Names are resolved on first use, so importing ``taid_vlm.eval.command`` (the
CLI) or a metric module does not pull in torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalConfig": "config", "evaluate": "harness", "model_names": "harness", "run_evaluation": "harness",
    "EvalError": "errors",
    "EvalItem": "items", "EvalSet": "items", "load_eval_set": "items",
    "ModelResult": "reports", "write_reports": "reports",
    "caption_scores": "caption_metrics",
    "exact_match": "text_metrics", "perplexity_from_nll": "text_metrics", "rouge_l": "text_metrics",
    "NORMALIZER_VERSION": "vqa_metrics", "normalize_answer": "vqa_metrics", "vqa_score": "vqa_metrics",
    "VQA_RULES": "vqa_metrics", "DEFAULT_VQA_RULES": "vqa_metrics",
    "add_eval_parser": "command", "run_eval": "command",
    "BENCHMARKS": "benchmarks", "load_benchmark_set": "benchmarks", "score_results_file": "benchmark_scores",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'taid_vlm.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
