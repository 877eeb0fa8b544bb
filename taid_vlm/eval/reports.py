"""Write an evaluation's three outputs: results.json, samples.jsonl, results.md.

Every file is written with ``taid_vlm/files.py`` (temporary sibling, fsync, rename), so a run
killed mid-write leaves the previous complete file rather than a truncated one. Each score
travels with what produced it (prompt, decoding settings, normaliser version, timings), as the
harnesses people trust do (docs/EVALUATION.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..files import write_text_atomically

RESULTS_JSON = "results.json"
SAMPLES_JSONL = "samples.jsonl"
RESULTS_MD = "results.md"
SAMPLE_FIELDS = ("id", "prediction", "references", "score")


@dataclass
class ModelResult:
    """One model's scores on one task. ``metrics`` holds numbers (None = not computed) and may
    hold labels such as the caption backend; labels are shown under the Markdown table."""

    model: str
    metrics: dict[str, Any]
    n: int
    prompt: str
    decoding: dict[str, Any]
    normalizer_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # task, split, breakdowns, ...

    def validate(self) -> "ModelResult":
        if not self.model or not isinstance(self.model, str):
            raise ValueError(f"ModelResult.model must be a non-empty name, got {self.model!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"ModelResult {self.model!r}: n must be a count >= 0, got {self.n!r}")
        for key, value in self.metrics.items():
            if not isinstance(value, (int, float, str, type(None))) or isinstance(value, bool):
                raise ValueError(
                    f"ModelResult {self.model!r}: metric {key!r} must be a number, None or a label "
                    f"string, got {type(value).__name__}; put nested breakdowns in `extra`"
                )
        return self


def _json_safe(value: Any) -> Any:
    """Strict JSON has no NaN/Infinity (an infinite perplexity is real): write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf", "nan"
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _check_unique(results: Sequence[ModelResult]) -> None:
    names = [r.model for r in results]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model names must be unique in one report, repeated: {duplicates}")


def write_results_json(
    out_dir: str | Path, results: Sequence[ModelResult], meta: Mapping[str, Any] | None = None
) -> Path:
    """``{"meta": {...}, "models": {name: {metrics, n, prompt, decoding, ...}}}``."""
    results = [r.validate() for r in results]
    _check_unique(results)
    payload = {
        "meta": dict(meta or {}),
        "models": {r.model: {k: v for k, v in asdict(r).items() if k != "model"} for r in results},
    }
    text = json.dumps(_json_safe(payload), indent=2, ensure_ascii=False, allow_nan=False)
    return write_text_atomically(Path(out_dir) / RESULTS_JSON, text + "\n")


def write_samples_jsonl(out_dir: str | Path, samples: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object per line; each needs id, prediction, references and score (a ``model``
    field tells models apart when several share the file). Predictions may be None: a failed
    generation is recorded, not dropped."""
    lines = []
    for k, sample in enumerate(samples):
        missing = [f for f in SAMPLE_FIELDS if f not in sample]
        if missing:
            raise ValueError(
                f"sample #{k} (id {sample.get('id')!r}) lacks field(s) {missing}; each needs {SAMPLE_FIELDS}"
            )
        lines.append(json.dumps(_json_safe(dict(sample)), ensure_ascii=False, allow_nan=False))
    return write_text_atomically(Path(out_dir) / SAMPLES_JSONL, "".join(line + "\n" for line in lines))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _default_columns(results: Sequence[ModelResult]) -> list[str]:
    columns: list[str] = []
    for r in results:
        for key, value in r.metrics.items():
            if key not in columns and (value is None or _is_number(value)):
                columns.append(key)
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if _is_number(value):
        return f"{value:.2f}" if isinstance(value, float) and math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|")


def render_results_md(
    results: Sequence[ModelResult],
    columns: Sequence[str] | None = None,
    title: str = "Results",
    notes: Sequence[str] = (),
) -> str:
    """A Markdown table, one row per model, ``n`` first then the chosen metric columns (default:
    every numeric metric in first-seen order). Label metrics (e.g. the caption backend) become
    notes under the table, so a fallback score can never pass for a reference one."""
    results = [r.validate() for r in results]
    _check_unique(results)
    columns = list(columns) if columns is not None else _default_columns(results)
    header = ["model", "n", *columns]
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in results:
        row = [_cell(r.model), str(r.n), *(_cell(r.metrics.get(c)) for c in columns)]
        lines.append("| " + " | ".join(row) + " |")
    label_notes = [
        f"{r.model}: {key} = {value}"
        for r in results
        for key, value in r.metrics.items()
        if isinstance(value, str)
    ]
    all_notes = [*notes, *label_notes]
    if all_notes:
        lines += ["", *(f"- {note}" for note in all_notes)]
    return "\n".join(lines) + "\n"


def write_results_md(out_dir: str | Path, results: Sequence[ModelResult], **kwargs: Any) -> Path:
    return write_text_atomically(Path(out_dir) / RESULTS_MD, render_results_md(results, **kwargs))


def write_reports(
    out_dir: str | Path,
    results: Sequence[ModelResult],
    samples: Iterable[Mapping[str, Any]],
    meta: Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
    title: str = "Results",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """All three files; samples first so results.json never points at samples that are missing."""
    samples_path = write_samples_jsonl(out_dir, samples)
    return {
        "samples": samples_path,
        "results": write_results_json(out_dir, results, meta),
        "markdown": write_results_md(out_dir, results, columns=columns, title=title, notes=notes),
    }
