"""The field's benchmarks: how each is asked, scored, broken down and submitted.

A benchmark fixes what a free-form ``--task`` leaves open: the instruction after the question
(LLaVA-1.5 / lmms-eval conventions), the metric and the breakdowns its papers report (VQAv2
answer types, VizWiz answerability, GQA question types, NoCaps domains), and the results file its
evaluation server accepts. The files are read as distributed by ``taid_vlm.data.benchmarks``; a
Hugging Face copy (parquet with image bytes) goes through the usual column mapping instead.
This module holds the specs and builds the items; ``benchmark_scores`` scores them and
``submissions`` writes the servers' files.

A test split without labels (VQAv2 test-dev, VizWiz/TextVQA test, NoCaps test) is answered and
written as a submission file; its metrics are None, never a made-up number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..data import load_caption_eval, load_vqa_eval
from ..data.benchmarks import read_benchmark
from ..data.benchmarks.vqa_api import test2015_question_ids
from ..data.loaders import _is_hf_source
from ..data.prompts import CAPTION_PROMPT, VQA_SUFFIX
from ..data.records import IMAGE_PLACEHOLDER, Record
from .errors import EvalError
from .items import EvalItem, EvalSet, _check_unique_ids
from .vqa_metrics import DEFAULT_VQA_RULES

UNANSWERABLE_HINT = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
VQA_ACCURACY = ("VQA accuracy x100 (official VQAv2 rules: normalised answers, min(1, matching humans / 3) "
                "averaged over the 10 leave-one-out subsets of the ten human answers)")
CAPTION_METRIC = "COCO caption metrics x100 (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D; pycocoevalcap when Java runs)"


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
    # VQA rule set of the benchmark's own reference evaluator when it is not vqaEval.py's (None: the default)
    vqa_rules: str | None = None

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
    # TextVQA's reference evaluator (M4C / EvalAI) normalises both sides of every answer, as the lmms-eval rules do
    Benchmark("textvqa", "TextVQA", "vqa", VQA_ACCURACY, VQA_SUFFIX, (),
              Submission("question_id", "answer", "EvalAI TextVQA Challenge"), vqa_rules="lmms-eval"),
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


def benchmark_vqa_rules(name: str | None, requested: str | None) -> str:
    """The VQA rules to score with: the ones asked for, else the benchmark's reference rules, else the default."""
    if requested is not None:
        return requested
    own = BENCHMARKS[name].vqa_rules if name in BENCHMARKS else None
    return own or DEFAULT_VQA_RULES


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


# ---- formats ----------------------------------------------------------------------------


def results_format(benchmark: Benchmark) -> tuple[str, str]:
    """The keys of a results file: the server's format, else the VQA / COCO caption results convention."""
    if benchmark.submission is not None:
        return benchmark.submission.id_key, benchmark.submission.answer_key
    return ("question_id", "answer") if benchmark.task == "vqa" else ("image_id", "caption")


def benchmark_markdown(eval_set: BenchmarkSet, results: Sequence[Any]) -> str:
    """Notes under the results table: the benchmark, its metric and where the submission files are."""
    info = eval_set.describe()
    lines = [f"\n## {info['title']}", "", f"- metric: {info['metric']}", f"- prompt: {info['prompt']!r}"]
    for r in results:
        if r.extra.get("submission"):
            lines.append(f"- {r.model}: submission file {r.extra['submission']}")
    return "\n".join(lines) + "\n"
