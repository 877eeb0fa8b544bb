"""Results files for the evaluation servers, written beside results.json (one per model).

VQAv2 test-dev, TextVQA, VizWiz, GQA and NoCaps keep their test labels private: a score exists only
once their server has read a JSON list of ``{id, answer}`` in its own keys. The VQAv2 server also
wants every test2015 question, so unasked ones are filled with empty answers when the test2015
questions file is given.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from .benchmarks import BenchmarkSet, Submission
from .items import EvalItem
from ..files import write_text_atomically


def write_submissions(out_dir: str | Path, eval_set: BenchmarkSet, samples: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One server-ready results file per model beside results.json; returns model -> file name."""
    submission = eval_set.benchmark.submission if eval_set.benchmark else None
    if submission is None:
        return {}
    by_model: dict[str, dict[str, str]] = defaultdict(dict)
    for row in samples:
        by_model[row["model"]][row["id"]] = row["prediction"]
    written = {}
    every_id = None
    if submission.all_ids is not None and eval_set.format != "hf":
        every_id = submission.all_ids([Path(f) for f in eval_set.files])
    for model, answers in by_model.items():
        entries = [{submission.id_key: submission_id(item, submission), submission.answer_key:
                    " ".join((answers.get(item.id) or "").split())} for item in eval_set.items]  # fmt: skip
        if every_id is not None:
            entries = _filled(entries, every_id, submission)
        name = f"submission-{eval_set.benchmark.name}-{_file_safe(model)}.json"
        write_text_atomically(Path(out_dir) / name, json.dumps(entries, ensure_ascii=False) + "\n")
        written[model] = name
    return written


def _filled(entries: list[dict], every_id: list, submission: Submission) -> list[dict]:
    """The server's full id list in its order, answered where asked and empty elsewhere."""
    asked = {e[submission.id_key]: e for e in entries}
    full = [asked.pop(i, None) or {submission.id_key: i, submission.answer_key: ""} for i in every_id]
    return full + list(asked.values())  # an asked id outside the list is kept, never dropped


def submission_id(item: EvalItem, submission: Submission) -> Any:
    """The id as the server keys it: the file's own value (an int for VQAv2), else the item id."""
    value = item.meta.get(submission.id_key.replace("questionId", "question_id"), item.id)
    if submission.numeric_id and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
