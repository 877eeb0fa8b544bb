"""The field's benchmarks: how each is asked, scored, broken down and submitted.

A benchmark fixes what a free-form ``--task`` leaves open: the instruction after the question
(LLaVA-1.5 / lmms-eval conventions), the metric and the breakdowns its papers report (VQAv2
answer types, VizWiz answerability, GQA question types, NoCaps domains), and the results file its
evaluation server accepts. The files are read as distributed by ``taid_vlm.data.benchmarks``; a
Hugging Face copy (parquet with image bytes) goes through the usual column mapping instead.

A test split without labels (VQAv2 test-dev, VizWiz/TextVQA test, NoCaps test) is answered and
written as a submission file; its metrics are None, never a made-up number.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..data import load_caption_eval, load_vqa_eval
from ..data.benchmarks import read_benchmark
from ..data.benchmarks.vqa_api import test2015_question_ids
from ..data.loaders import _is_hf_source
from ..data.prompts import CAPTION_PROMPT, VQA_SUFFIX
from ..data.records import IMAGE_PLACEHOLDER, Record
from .caption_metrics import caption_scores
from .errors import EvalError
from .items import EvalItem, EvalSet, _check_unique_ids
from .reports import _write_atomic
from .scoring import TaskScores, score_captions, score_vqa
from .vqa_metrics import ANSWER_TYPES, normalize_answer

UNANSWERABLE_HINT = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
VQA_ACCURACY = ("VQA accuracy x100 (official VQAv2 rules: normalised answers, min(1, matching humans / 3) "
                "averaged over the 10 leave-one-out subsets of the ten human answers)")
CAPTION_METRIC = "COCO caption metrics x100 (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D; pycocoevalcap when Java runs)"
VIZWIZ_UNANSWERABLE = "unanswerable"  # the answer VizWiz annotators give when a question cannot be answered


@dataclass(frozen=True)
class Submission:
    """The results file an evaluation server takes: a JSON list of ``{id_key: id, answer_key: answer}``."""

    id_key: str
    answer_key: str
    server: str
    numeric_id: bool = True
    note: str = ""
    # every id the server expects, read from the --data files (None: just the items asked)
    all_ids: Callable[[Sequence[Path]], list | None] | None = None

    def describe(self) -> dict[str, str]:
        shape = f"[{{{self.id_key}, {self.answer_key}}}]"
        return {"server": self.server, "format": shape, **({"note": self.note} if self.note else {})}


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    task: str
    metric: str
    instruction: str  # appended to the question (VQA) or after the image (captions)
    breakdowns: tuple[str, ...] = ()  # record meta keys the benchmark reports accuracy by
    submission: Submission | None = None

    @property
    def prompt_template(self) -> str:
        question = "\n{question}" if self.task == "vqa" else ""
        return f"{IMAGE_PLACEHOLDER}{question}{self.instruction}"


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("vqav2", "VQAv2", "vqa", VQA_ACCURACY, VQA_SUFFIX, ("answer_type",),
              Submission("question_id", "answer", "EvalAI VQA Challenge (test-dev / test-standard)",
                         note="the server wants every test2015 question: pass the test2015 questions file with the "
                         "test-dev one and the questions not asked get an empty answer",
                         all_ids=test2015_question_ids)),
    Benchmark("okvqa", "OK-VQA", "vqa", VQA_ACCURACY, UNANSWERABLE_HINT + VQA_SUFFIX, ("answer_type",)),
    Benchmark("textvqa", "TextVQA", "vqa", VQA_ACCURACY, VQA_SUFFIX, (),
              Submission("question_id", "answer", "EvalAI TextVQA Challenge")),
    Benchmark("vizwiz", "VizWiz VQA", "vqa", VQA_ACCURACY + "; plus accuracy by answer type (unanswerable "
              "included) and precision/recall/F1 of answering 'unanswerable' on the unanswerable questions",
              UNANSWERABLE_HINT + VQA_SUFFIX, ("answer_type", "answerable"),
              Submission("image", "answer", "EvalAI VizWiz VQA Challenge", False)),
    Benchmark("gqa", "GQA", "vqa", "exact-match accuracy x100 after the VQA answer normalisation "
              "(one reference answer per question)", VQA_SUFFIX, ("structural", "semantic"),
              Submission("questionId", "prediction", "GQA evaluation server", False)),
    Benchmark("coco", "COCO Captions (Karpathy split)", "caption", CAPTION_METRIC, "\n" + CAPTION_PROMPT),
    Benchmark("flickr30k", "Flickr30k (Karpathy split)", "caption", CAPTION_METRIC, "\n" + CAPTION_PROMPT),
    Benchmark("nocaps", "NoCaps", "caption", CAPTION_METRIC + "; CIDEr also per domain, each scored on its own "
              "images", "\n" + CAPTION_PROMPT, ("domain",), Submission("image_id", "caption", "EvalAI NoCaps Challenge")),
)}  # fmt: skip
BENCHMARK_NAMES = tuple(BENCHMARKS)


@dataclass
class BenchmarkSet(EvalSet):
    """An EvalSet that knows its benchmark; ``scored`` is False for a test split without labels."""

    benchmark: Benchmark | None = None
    files: list[str] = field(default_factory=list)
    image_dir: str | None = None
    split: str | None = None
    scored: bool = True

    def describe(self) -> dict[str, Any]:
        """What results.json records about the benchmark run."""
        b = self.benchmark
        assert b is not None
        return {
            "name": b.name, "title": b.title, "metric": b.metric if self.scored else
            f"not scored: the file has no labels (a test split); submit the predictions to {self._server()}",
            "prompt": b.prompt_template, "instruction": b.instruction, "convention": "LLaVA-1.5 / lmms-eval",
            "files": [str(Path(f).absolute()) if Path(f).exists() else f for f in self.files],
            "images": self.image_dir, "split": self.split, "scored": self.scored,
            "breakdowns": list(b.breakdowns),
            "submission": b.submission.describe() if b.submission else None,
        }  # fmt: skip

    def _server(self) -> str:
        submission = self.benchmark.submission if self.benchmark else None
        return submission.server if submission else "the benchmark's evaluation server"


# ---- resolving the command line ------------------------------------------------------------------------


def benchmark_task(name: str, task: str | None) -> str:
    """The task benchmark ``name`` scores; a different ``--task`` given with it is an error."""
    if name not in BENCHMARKS:
        raise EvalError(f"--benchmark {name!r} is not one of {', '.join(BENCHMARKS)}")
    own = BENCHMARKS[name].task
    if task is not None and task != own:
        raise EvalError(f"--benchmark {name} is a {own} benchmark; drop --task {task} (or pass --task {own})")
    return own


def data_paths(data: str | Path | Sequence[str | Path], benchmark: str | None) -> str | list[str]:
    """``--data`` as the loaders take it: one path for a task, one or more files for a benchmark."""
    paths = [str(data)] if isinstance(data, (str, Path)) else [str(p) for p in data]
    if not paths:
        raise EvalError("--data is empty; pass the evaluation file(s)")
    if benchmark is not None:
        return paths
    if len(paths) > 1:
        raise EvalError(f"--data got {len(paths)} files; a --task reads one file (several files, such as VQAv2 "
                        "questions + annotations, need --benchmark)")
    return paths[0]


# ---- loading -----------------------------------------------------------------------------------------------


def load_benchmark_set(
    name: str, data: Sequence[str], limit: int | None = None, data_options: Mapping[str, Any] | None = None
) -> BenchmarkSet:
    """The items of benchmark ``name``: its distributed files, or one Hugging Face dataset (parquet, folder)."""
    benchmark = BENCHMARKS[name]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EvalError(f"limit must be a positive number of items, got {limit!r}")
    options = dict(data_options or {})
    if len(data) == 1 and _is_hf_source(data[0]):
        loader = load_vqa_eval if benchmark.task == "vqa" else load_caption_eval
        records, fmt = loader(data[0], limit=limit, **options), "hf"
    else:
        unknown = sorted(set(options) - {"image_dir", "split", "check_images"})
        if unknown:
            flags = ", ".join("--" + k.removesuffix("s").replace("_", "-") for k in unknown)
            raise EvalError(f"{flags} works only with a Hugging Face dataset; "
                            f"{name}'s files are read as distributed")
        records = read_benchmark(name, data, options.get("image_dir"), split=options.get("split"), limit=limit,
                                 check_images=options.get("check_images", "exists"))
        fmt = f"{name} (as distributed)"
    source = ", ".join(data)
    if not records:
        raise EvalError(f"{source}: no {benchmark.title} items to evaluate (check the file and --split)")
    items = [_item(record, benchmark) for record in records]
    _check_unique_ids(items, source)
    scored = _labelled(items, records, source)
    return BenchmarkSet(benchmark.task, source, fmt, items, benchmark.prompt_template, benchmark=benchmark,
                        files=list(data), image_dir=_image_dir(options, data), split=_split(name, options),
                        scored=scored)  # fmt: skip


def _item(record: Record, benchmark: Benchmark) -> EvalItem:
    messages = [dict(m) for m in record.messages]
    messages[-1]["content"] += benchmark.instruction
    prompt = record.with_messages(messages)
    references = list((record.answers if benchmark.task == "vqa" else record.references) or [])
    target = prompt.with_messages(messages + [{"role": "assistant", "content": references[0]}]) if references else prompt
    return EvalItem(record.id, prompt, references, target, benchmark.instruction, dict(record.meta))


def _labelled(items: list[EvalItem], records: list[Record], source: str) -> bool:
    """All items labelled (scored) or none (a test split); a mix means a damaged file."""
    unlabelled = [r for item, r in zip(items, records) if not item.references]
    if unlabelled and len(unlabelled) < len(items):
        where = unlabelled[0].meta.get("source", source)
        raise EvalError(f"{where} (record {unlabelled[0].id!r}): no answers or references while other items have "
                        "them; pass the file as downloaded (a test split has none at all)")
    return not unlabelled


def _image_dir(options: Mapping[str, Any], data: Sequence[str]) -> str:
    folder = options.get("image_dir") or Path(data[0]).parent
    return str(Path(folder).absolute())


def _split(name: str, options: Mapping[str, Any]) -> str | None:
    if options.get("split"):
        return str(options["split"])
    return "test" if name in ("coco", "flickr30k") else None


# ---- scoring -----------------------------------------------------------------------------------------------


def score_benchmark(eval_set: BenchmarkSet, predictions: Sequence[str], caption_backend: str = "auto") -> TaskScores:
    """The task's scores plus the benchmark's own breakdowns; predictions only for an unlabelled split."""
    benchmark = eval_set.benchmark
    assert benchmark is not None
    if not eval_set.scored:
        return _unscored(eval_set, predictions)
    if benchmark.task == "vqa":
        scores = score_vqa(eval_set.items, predictions)
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


# ---- results files made elsewhere ----------------------------------------------------------------------------


def results_format(benchmark: Benchmark) -> tuple[str, str]:
    """The keys of a results file: the server's format, else the VQA / COCO caption results convention."""
    if benchmark.submission is not None:
        return benchmark.submission.id_key, benchmark.submission.answer_key
    return ("question_id", "answer") if benchmark.task == "vqa" else ("image_id", "caption")


def score_results_file(eval_set: BenchmarkSet, path: str | Path, caption_backend: str = "auto") -> TaskScores:
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
    wanted = {str(_submission_id(item, submission)): k for k, item in enumerate(eval_set.items)}
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
    return score_benchmark(eval_set, [p or "" for p in predictions], caption_backend)


# ---- submission files ------------------------------------------------------------------------------------


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
        entries = [{submission.id_key: _submission_id(item, submission), submission.answer_key:
                    " ".join((answers.get(item.id) or "").split())} for item in eval_set.items]  # fmt: skip
        if every_id is not None:
            entries = _filled(entries, every_id, submission)
        name = f"submission-{eval_set.benchmark.name}-{_file_safe(model)}.json"
        _write_atomic(Path(out_dir) / name, json.dumps(entries, ensure_ascii=False) + "\n")
        written[model] = name
    return written


def _filled(entries: list[dict], every_id: list, submission: Submission) -> list[dict]:
    """The server's full id list in its order, answered where asked and empty elsewhere."""
    asked = {e[submission.id_key]: e for e in entries}
    full = [asked.pop(i, None) or {submission.id_key: i, submission.answer_key: ""} for i in every_id]
    return full + list(asked.values())  # an asked id outside the list is kept, never dropped


def _submission_id(item: EvalItem, submission: Submission) -> Any:
    """The id as the server keys it: the file's own value (an int for VQAv2), else the item id."""
    value = item.meta.get(submission.id_key.replace("questionId", "question_id"), item.id)
    if submission.numeric_id and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def benchmark_markdown(eval_set: BenchmarkSet, results: Sequence[Any]) -> str:
    """Notes under the results table: the benchmark, its metric and where the submission files are."""
    info = eval_set.describe()
    lines = [f"\n## {info['title']}", "", f"- metric: {info['metric']}", f"- prompt: {info['prompt']!r}"]
    for r in results:
        if r.extra.get("submission"):
            lines.append(f"- {r.model}: submission file {r.extra['submission']}")
    return "\n".join(lines) + "\n"
