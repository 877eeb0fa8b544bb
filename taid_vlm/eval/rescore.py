"""``taid-vlm eval --benchmark NAME --predictions FILE``: score answers made elsewhere, no model run.

A results file from another harness (lmms-eval, VLMEvalKit, a server submission) is scored by the
same rules and written to the same three outputs as a model run, so numbers from different tools
can be compared line by line. No images are opened: only the labels are needed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from .benchmark_scores import score_results_file
from .benchmarks import benchmark_vqa_rules, load_benchmark_set, results_format
from .errors import EvalError
from .reports import ModelResult, write_reports
from .scoring import SAMPLE_SCORE


def rescore(
    predictions: str | Path,
    benchmark: str | None,
    data: Sequence[str | Path],
    output: str | Path,
    label: str | None = None,
    caption_backend: str = "auto",
    data_options: Mapping[str, Any] | None = None,
    vqa_rules: str | None = None,
) -> dict[str, Any]:
    """Score ``predictions`` against ``benchmark``'s files, write results.json, samples.jsonl, results.md."""
    if benchmark is None:
        raise EvalError("--predictions needs --benchmark NAME: the benchmark decides the file format and the rules")
    if Path(output).is_file():
        raise EvalError(f"--output {output} is a file; give a directory for the results")
    options = {"check_images": "none", **(data_options or {})}
    eval_set = load_benchmark_set(benchmark, [str(d) for d in data], None, options)
    if not eval_set.scored:
        raise EvalError(f"{eval_set.source} has no labels (a test split): nothing to score the predictions against; "
                        "submit them to the evaluation server")
    vqa_rules = benchmark_vqa_rules(benchmark, vqa_rules)
    scores = score_results_file(eval_set, predictions, caption_backend, vqa_rules)
    name = label or Path(predictions).stem
    source = str(Path(predictions).absolute())
    id_key, answer_key = results_format(eval_set.benchmark)
    result = ModelResult(
        model=name, metrics=scores.metrics, n=len(eval_set.items), prompt=eval_set.prompt_template,
        decoding={"strategy": "none: predictions read from a results file", "results_file": source},
        normalizer_version=scores.normalizer_version,
        extra={"task": eval_set.task, "source": source, "results_format": f"[{{{id_key}, {answer_key}}}]",
               **scores.extra},
    )  # fmt: skip
    meta = {
        "task": eval_set.task, "data": eval_set.source, "data_format": eval_set.format,
        "n_items": len(eval_set.items), "benchmark": eval_set.describe(), "predictions": source,
        "sample_score": SAMPLE_SCORE[eval_set.task], "models": [name], "taid_vlm_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    if eval_set.task == "caption":
        meta["caption_backend_requested"] = caption_backend
    else:
        meta["vqa_rules"] = vqa_rules
    samples = [{"model": name, **row} for row in scores.samples]
    notes = [f"predictions: {source} (not generated here)", f"metric: {eval_set.describe()['metric']}"]
    paths = write_reports(output, [result], samples, meta, title=f"{eval_set.benchmark.title} evaluation",
                          notes=notes)
    return json.loads(paths["results"].read_text(encoding="utf-8"))
