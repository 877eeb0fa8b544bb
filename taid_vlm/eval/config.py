"""What an evaluation run depends on, declared once: the fields are ``evaluate``'s settings and,
through ``taid_vlm/flags.py``, the ``taid-vlm eval`` flags (name, default, help, choices).

Light on purpose (no torch): the command line builds its parser from this class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..flags import flag
from .benchmarks import BENCHMARK_NAMES, benchmark_task, benchmark_vqa_rules, data_paths
from .caption_metrics import BACKENDS
from .errors import EvalError
from .prompts import DEFAULT_MAX_NEW_TOKENS, TASKS
from .vqa_metrics import VQA_RULES

if TYPE_CHECKING:
    from ..models import ModelAdapter

    ModelLike = str | Path | dict | ModelAdapter

_DEFAULT_TOKENS = ", ".join(f"{t} {n}" for t, n in DEFAULT_MAX_NEW_TOKENS.items())


@dataclass
class EvalConfig:
    """``models`` are paths, hub ids, composed specs or loaded adapters; ``labels`` name them in the
    outputs (default: the directory name). ``dtype`` and ``device`` apply to the models the
    harness loads; loaded adapters are used where they are."""

    models: list[ModelLike] = field(default_factory=list, metadata=flag(
        "--model", action="append", metavar="PATH",
        help="checkpoint dir, hub id or composed spec; repeat to compare models"))
    predictions: str | None = field(default=None, metadata=flag(
        metavar="FILE", help="with --benchmark and no --model: score a results file made elsewhere, in the server's "
        "or the COCO/VQA results format"))
    labels: list[str] | None = field(default=None, metadata=flag(
        "--label", action="append", metavar="NAME",
        help="display name per --model, in order (default: the directory name)"))
    data: str | list[str] = field(default_factory=list, metadata=flag(  # a list only with a benchmark
        required=True, nargs="+", action="extend", metavar="PATH",
        help="evaluation JSONL (vqa / caption rows), LLaVA or chat file, COCO captions file, or a Hugging Face "
        "dataset; with --benchmark, the benchmark's own file(s) as downloaded"))
    task: str | None = field(default=None, metadata=flag(  # None when ``benchmark`` names it
        choices=TASKS, help="what to score (not needed with --benchmark)"))
    benchmark: str | None = field(default=None, metadata=flag(
        choices=BENCHMARK_NAMES, metavar="NAME",
        help=f"read a benchmark's files as distributed and score it its way: {', '.join(BENCHMARK_NAMES)}"))
    output: str = field(default="", metadata=flag(required=True, metavar="DIR", help="directory for the results"))
    batch_size: int = 8
    max_new_tokens: int | None = field(default=None, metadata=flag(help=f"default by task: {_DEFAULT_TOKENS}"))
    limit: int | None = field(default=None, metadata=flag(help="score only the first N items"))
    dtype: str | None = field(default=None, metadata=flag(
        help="float32, bfloat16 or float16 (default: the checkpoint's)"))
    device: str | None = field(default=None, metadata=flag(
        help="e.g. cuda, cuda:1, cpu (default: where the model loads)"))
    caption_backend: str = field(default="auto", metadata=flag(
        choices=BACKENDS, help="pycocoevalcap (needs Java), python (fallback, no METEOR) or auto"))
    vqa_rules: str | None = field(default=None, metadata=flag(  # None: the benchmark's reference rules, else the default
        choices=VQA_RULES,
        help="official: GT-Vision-Lab vqaEval.py (the evaluation server's rules, default); lmms-eval: lmms-eval's "
        "VQAv2 scorer (docs/EVALUATION.md); a --benchmark whose reference evaluator differs uses its own by default "
        "(TextVQA: lmms-eval)"))
    image_dir: str | None = field(default=None, metadata=flag(
        "--image-dir", "--images", metavar="DIR",
        help="folder that relative image paths resolve against, or a benchmark's image folder (default: the data "
        "file's folder)"))
    split: str | None = field(default=None, metadata=flag(
        help="dataset split (Hugging Face datasets; Karpathy files: train, restval, val, test)"))
    columns: list[str] | dict[str, str] = field(default_factory=list, metadata=flag(
        "--column", action="append", metavar="FIELD=COLUMN",
        help="map our field to a dataset column, e.g. answers=multiple_choice_answer (HF only)"))
    progress: bool = field(default=True, metadata=flag(
        "--quiet", action="store_false", help="no progress lines on stderr"))
    backend: str = field(default="hf", metadata=flag(
        choices=("hf", "vllm"), help="hf: the model's own generate; vllm: a vLLM server (answers greedily the same "
        "way; started for each --model from .venv-vllm unless --server names one)"))
    server: str | None = field(default=None, metadata=flag(
        metavar="URL", help="with --backend vllm and one --model: the `taid-vlm teacher-server` of that model"))

    def __post_init__(self) -> None:
        self.models = list(self.models)
        self.data = [str(d) for d in self.data] if isinstance(self.data, (list, tuple)) else str(self.data)
        self.output = str(self.output)
        self.labels = None if self.labels is None else list(self.labels)

    def validate(self) -> "EvalConfig":
        """Check everything that can be checked before a model loads; fills ``task`` and ``vqa_rules``."""
        self.data_options  # noqa: B018 - a malformed --column is the user's first mistake to hear about
        if self.benchmark is not None:
            self.task = benchmark_task(self.benchmark, self.task)
        self.data = data_paths(self.data, self.benchmark)
        if self.task is None:
            raise EvalError(f"no task: pass --task ({', '.join(TASKS)}) or --benchmark NAME")
        if self.task not in TASKS:
            raise EvalError(f"--task {self.task!r} is not one of {', '.join(TASKS)}")
        if not self.models:
            raise EvalError("no models to evaluate; pass at least one --model")
        for name, value in (("batch_size", self.batch_size), ("max_new_tokens", self.max_new_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EvalError(f"{name} must be a positive integer, got {value!r}")
        if self.caption_backend not in BACKENDS:
            raise EvalError(f"caption backend {self.caption_backend!r} is not one of {', '.join(BACKENDS)}")
        self.vqa_rules = benchmark_vqa_rules(self.benchmark, self.vqa_rules)
        if self.vqa_rules not in VQA_RULES:
            raise EvalError(f"--vqa-rules {self.vqa_rules!r} is not one of {', '.join(VQA_RULES)}")
        if self.backend not in ("hf", "vllm"):
            raise EvalError(f"--backend {self.backend!r} is not one of hf, vllm")
        if self.server and (self.backend != "vllm" or len(self.models) != 1):
            raise EvalError("--server is the vLLM server of the one --model: pass --backend vllm and exactly one --model")
        if not self.output:
            raise EvalError("no --output: give a directory for the results")
        if Path(self.output).is_file():
            raise EvalError(f"--output {self.output} is a file; give a directory for the results")
        return self

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[self.task]

    @property
    def data_options(self) -> dict[str, Any]:
        """Loader options: only those given (the file loaders refuse dataset options such as split)."""
        options: dict[str, Any] = {}
        if self.image_dir is not None:
            options["image_dir"] = str(self.image_dir)
        if self.split is not None:
            options["split"] = self.split
        if self.columns:
            options["columns"] = _columns(self.columns)
        return options


def _columns(columns: list[str] | dict[str, str]) -> dict[str, str]:
    if isinstance(columns, dict):
        return dict(columns)
    mapping = {}
    for item in columns:
        ours, eq, theirs = item.partition("=")
        if not eq or not ours or not theirs:
            raise EvalError(f"--column {item!r} must be FIELD=COLUMN, e.g. answers=multiple_choice_answer")
        mapping[ours] = theirs
    return mapping
