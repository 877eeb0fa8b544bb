"""``taid-vlm eval``: score several models on the same items and write what a reader needs to trust it.

One run = one data file, one task, any number of models (teacher and students side by side).
Each model answers every item (batched greedy decoding, left padding), is scored with the
field's own rules (``vqa_metrics``, ``caption_metrics``, ``text_metrics``), and gets timings.
Models given as paths are loaded one at a time and released before the next, so a teacher and
its students need not fit in memory together.

Outputs in ``output``: ``results.json`` (per model: metrics, n, prompt, decoding settings,
normaliser version, timings, breakdowns), ``samples.jsonl`` (one row per model and item) and
``results.md`` (models as rows).

Data-parallel under ``torchrun`` / ``accelerate launch``: each process loads the model on its own
device and answers its share of the items, whole batches of the one-process order (so every
batch, and therefore every answer, is the one a single process computes); rank 0 gathers the
answers in item order, scores them once and writes the three files once. ``meta.processes`` and
``meta.items_per_process`` record the split; generation time is the slowest rank's.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__
from ..files import write_text_atomically
from ..models import ModelAdapter, load
from .benchmark_scores import score_benchmark
from .benchmarks import BenchmarkSet, benchmark_markdown, load_benchmark_set
from .config import EvalConfig
from .errors import EvalError
from .generation import GenerationRun, generate_answers, reference_nll
from .items import EvalSet, load_eval_set
from .reports import RESULTS_MD, ModelResult, render_results_md, write_results_json, write_samples_jsonl
from .vqa_metrics import DEFAULT_VQA_RULES
from .scoring import SAMPLE_SCORE, TaskScores, score_captions, score_text, score_vqa
from .submissions import write_submissions

ModelLike = str | Path | dict | ModelAdapter


def evaluate(
    models: Sequence[ModelLike], data: str | Path | Sequence[str | Path], task: str | None = None,
    output: str | Path = "", **settings: Any,
) -> dict[str, Any]:
    """Evaluate ``models`` on ``data`` for ``task`` (or on ``benchmark``'s files, which name the task), write
    the three outputs (and a benchmark's submission files), return results.json's content. ``settings``:
    any other ``EvalConfig`` field (``batch_size``, ``limit``, ``labels``, ``benchmark``, ``image_dir``, ...)."""
    return run_evaluation(EvalConfig(models=models, data=data, task=task, output=output, **settings))


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    config.validate()
    names = model_names(config.models, config.labels)
    _preflight(config.models, names)
    group = Processes.from_environment()
    if group.world_size > 1 and config.backend == "vllm":
        raise EvalError("--backend vllm runs in one process (the server batches the items itself); start it "
                        "without torchrun / accelerate launch")
    if group.world_size > 1 and config.device is None:
        config.device = str(group.env.device)  # each process its own device
    if config.benchmark is not None:
        eval_set = load_benchmark_set(config.benchmark, config.data, config.limit, config.data_options)
    else:
        eval_set = load_eval_set(config.data, config.task, config.limit, config.data_options)
    shares = group.shares(len(eval_set.items), config.batch_size)
    if group.is_main:
        split = f" over {group.world_size} processes ({', '.join(map(str, shares))} items each)" if group.world_size > 1 else ""
        _log(config, f"{config.task}: {len(eval_set.items)} items from {eval_set.source}, {len(names)} model(s){split}")
    results, samples = [], []
    for model, name in zip(config.models, names):
        result, rows = _evaluate_one(model, name, eval_set, config, group)
        if not isinstance(model, ModelAdapter):
            _release_memory()  # the model this call loaded is gone; hand its memory back
        if not group.is_main:
            continue
        results.append(result)
        samples.extend({"model": name, **row} for row in rows)
        numbers = (f"{k} {_fmt(v)}" for k, v in result.metrics.items() if not isinstance(v, str))
        _log(config, f"{name}: " + ", ".join(numbers))
    written = None
    if group.is_main:
        written = write_outputs(config.output, eval_set, config, results, samples,
                                {"processes": group.world_size, "items_per_process": shares})
    return group.from_main(written)


@dataclass
class _Failure:
    message: str


class Processes:
    """The processes an evaluation runs on: one, or those ``torchrun`` / ``accelerate launch`` started."""

    def __init__(self, env: Any = None):
        self.env = env
        self.world_size = env.world_size if env is not None else 1
        self.rank = env.rank if env is not None else 0
        self.is_main = self.rank == 0

    @classmethod
    def from_environment(cls) -> "Processes":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from ..train.parallel import Distributed

        return cls(Distributed())

    def shares(self, n_items: int, batch_size: int) -> list[int]:
        """Items per process: contiguous runs of whole batches, as even as whole batches allow."""
        n_batches = -(-n_items // batch_size)
        edges = [min(n_items, (r * n_batches // self.world_size) * batch_size) for r in range(self.world_size + 1)]
        return [b - a for a, b in zip(edges, edges[1:])]

    def mine(self, items: Sequence[Any], batch_size: int) -> Sequence[Any]:
        start = sum(self.shares(len(items), batch_size)[: self.rank])
        return items[start : start + self.shares(len(items), batch_size)[self.rank]]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` in rank order; a failure (an exception as ``value``) on any process is
        raised on all of them: its own error where it happened, an EvalError naming it elsewhere."""
        if self.env is None:
            if isinstance(value, BaseException):
                raise value
            return [value]
        failed = isinstance(value, BaseException)
        everyone = self.env.gather_objects(_Failure(" ".join(str(value).split())) if failed else value)
        if failed:
            raise value
        for rank, other in enumerate(everyone):
            if isinstance(other, _Failure):
                raise EvalError(f"process {rank} of {self.world_size} failed: {other.message}")
        return everyone

    def from_main(self, value: Any) -> Any:
        if self.env is None or not self.env.active:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


# ---- one model ---------------------------------------------------------------------------------------


def _evaluate_one(model: ModelLike, name: str, eval_set: EvalSet, config: EvalConfig,
                  group: Processes | None = None) -> tuple[ModelResult | None, list]:
    """Load, answer this process's share, gather; the main process scores (others get (None, []))."""
    group = group or Processes()
    if config.backend == "vllm":
        with served_model(model, name, config) as served:
            return _scored(served, model, name, eval_set, config, [_answer(served, name, eval_set, config, group,
                                                                           served.load_s)])
    adapter = None
    try:
        start = time.perf_counter()
        adapter = model if isinstance(model, ModelAdapter) else _load(model, name, config)
        shared: Any = _answer(adapter, name, eval_set, config, group, time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - raised on every process by gather, so none waits for the others
        shared = e
    everyone = group.gather(shared)
    if not group.is_main:
        return None, []
    return _scored(adapter, model, name, eval_set, config, everyone)


def _answer(adapter: ModelAdapter, name: str, eval_set: EvalSet, config: EvalConfig, group: Processes,
            load_s: float) -> tuple[GenerationRun, list | None, float, float]:
    """This process's share: (answers, reference NLLs for the text task, their seconds, load seconds)."""
    _check_can_answer(adapter, name, eval_set)
    items = group.mine(eval_set.items, config.batch_size)
    run = generate_answers(adapter, [i.prompt for i in items], name, config.batch_size, config.new_tokens,
                           _progress(config, name) if group.is_main else None)
    nll, nll_s = None, 0.0
    if eval_set.task == "text":
        start = time.perf_counter()
        nll = reference_nll(adapter, [i.target for i in items], name, config.batch_size)
        nll_s = time.perf_counter() - start
    return run, nll, nll_s, load_s


def _scored(adapter: Any, model: ModelLike, name: str, eval_set: EvalSet, config: EvalConfig,
            everyone: list[tuple[GenerationRun, list | None, float, float]]) -> tuple[ModelResult, list]:
    """Every process's answers joined in item order, scored once."""
    run = _joined([r for r, *_ in everyone])
    nll = [x for _, part, *_ in everyone for x in part] if eval_set.task == "text" else None
    timings = {"load_s": max(t for *_, t in everyone), "generate_s": run.seconds, "items_per_s": run.items_per_s,
               "tokens_per_s": run.tokens_per_s}
    if nll is not None:
        timings["perplexity_s"] = max(s for _, _, s, _ in everyone)
    start = time.perf_counter()
    scores = _score(eval_set, run.predictions, nll, config.caption_backend, config.vqa_rules)
    timings["score_s"] = time.perf_counter() - start
    return _model_result(adapter, model, name, eval_set, config, run, scores, timings), scores.samples


def _joined(runs: list[GenerationRun]) -> GenerationRun:
    """The processes' answers in item order; time is the slowest process's (they ran side by side)."""
    counted = all(r.generated_tokens is not None for r in runs)
    return GenerationRun([p for r in runs for p in r.predictions], max(r.seconds for r in runs),
                         sum(r.generated_tokens for r in runs) if counted else None,
                         sum(r.n_hit_limit for r in runs) if counted else None)


def _preflight(models: Sequence[ModelLike], names: Sequence[str]) -> None:
    """Catch a mistyped path before the first model spends minutes generating."""
    for model, name in zip(models, names):
        if not isinstance(model, (str, Path, dict, ModelAdapter)):
            raise EvalError(
                f"model {name!r}: expected a checkpoint path, hub id, composed spec or a loaded ModelAdapter, "
                f"got {type(model).__name__}"
            )
        text = str(model)
        looks_local = isinstance(model, Path) or text.startswith(("/", ".", "~"))
        if not isinstance(model, (dict, ModelAdapter)) and looks_local and not Path(text).expanduser().exists():
            raise EvalError(f"cannot load model {name!r}: no such checkpoint directory {text}")


@contextmanager
def served_model(model: ModelLike, name: str, config: EvalConfig) -> Iterator[Any]:
    """The model answered by a vLLM server: ``--server``'s, or one started for it here (stopped after)."""
    from ..teacher_server import ServerConfig, open_served, start_server
    from ..teacher_server.launcher import free_port, has_gpu

    if isinstance(model, (dict, ModelAdapter)) or not Path(str(model)).is_dir():
        raise EvalError(f"--backend vllm serves checkpoint folders; model {name!r} ({model}) is not one")
    start = time.perf_counter()
    process = None
    url = config.server
    if url is None:
        _log(config, f"{name}: starting a vLLM server (scripts/setup_vllm.sh's environment)")
        process = start_server(ServerConfig(teacher=str(model), port=free_port(), top_k=1, dtype=config.dtype or "auto",
                                              eager=not has_gpu()))  # no graph compilation on a CPU
        url = process.url
    try:
        served = open_served(str(model), url, top_k=1, timeout=60.0, role="student")
        served.load_s = time.perf_counter() - start
        yield served
    finally:
        if process is not None:
            process.stop()


def _load(model: ModelLike, name: str, config: EvalConfig) -> ModelAdapter:
    try:
        return load(model, role="student", dtype=config.dtype, device=config.device)
    except Exception as e:  # noqa: BLE001 - any load failure is re-raised naming the model
        raise EvalError(f"cannot load model {name!r} from {model}: {type(e).__name__}: {e}") from e


def _check_can_answer(adapter: ModelAdapter, name: str, eval_set: EvalSet) -> None:
    if adapter.family_info.text_only and eval_set.has_images:
        raise EvalError(
            f"model {name!r} is text-only ({adapter.family}) but {eval_set.source} has images; evaluate a "
            "VLM on it, or a text-only model on the text variant of the data (taid-vlm data shapes --text)"
        )


def _score(eval_set: EvalSet, predictions: list[str], nll: list | None, caption_backend: str,
           vqa_rules: str = DEFAULT_VQA_RULES) -> TaskScores:
    if isinstance(eval_set, BenchmarkSet):
        return score_benchmark(eval_set, predictions, caption_backend, vqa_rules)
    if eval_set.task == "vqa":
        return score_vqa(eval_set.items, predictions, vqa_rules)
    if eval_set.task == "caption":
        return score_captions(eval_set.items, predictions, caption_backend)
    return score_text(eval_set.items, predictions, nll)


def _model_result(
    adapter: ModelAdapter, source: ModelLike, name: str, eval_set: EvalSet, config: EvalConfig,
    run: GenerationRun, scores: TaskScores, timings: dict[str, Any],
) -> ModelResult:  # fmt: skip
    stop_ids = adapter.stop_token_ids
    decoding = {
        "strategy": "greedy", "do_sample": False, "num_beams": 1, "max_new_tokens": config.new_tokens,
        "batch_size": config.batch_size, "padding_side": "left", "stop_token_ids": stop_ids,
        "stop_tokens": adapter.tokenizer.convert_ids_to_tokens(stop_ids),
    }  # fmt: skip
    metrics = dict(scores.metrics)
    metrics["items_per_s"] = round(run.items_per_s, 2)
    metrics["tokens_per_s"] = None if run.tokens_per_s is None else round(run.tokens_per_s, 2)
    served = getattr(adapter, "url", None)  # a teacher_server.ServedModel: the model runs in that server
    extra = {
        "task": eval_set.task,
        "source": "<in-memory ModelAdapter>" if isinstance(source, ModelAdapter) else str(source),
        "family": adapter.family, "model_type": adapter.model_type, "backend": config.backend,
        "dtype": str(adapter.dtype).removeprefix("torch.") if served is None else config.dtype or "auto",
        "device": str(adapter.device) if served is None else f"vllm server {served}",
        "generated_tokens": run.generated_tokens, "n_hit_max_new_tokens": run.n_hit_limit,
        "example_prompt": adapter.render([eval_set.items[0].prompt], add_generation_prompt=True).texts[0],
        **scores.extra,
    }  # fmt: skip
    return ModelResult(
        model=name, metrics=metrics, n=len(eval_set.items), prompt=eval_set.prompt_template, decoding=decoding,
        normalizer_version=scores.normalizer_version, timings=timings, extra=extra,
    )  # fmt: skip


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- names -------------------------------------------------------------------------------------------


def model_names(models: Sequence[ModelLike], labels: Sequence[str] | None = None) -> list[str]:
    """Labels when given; else a path's directory name (``runs/a/student`` -> ``student``), widened
    to ``a/student`` when two models would share a name, and a spec string as written."""
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != len(models):
            raise EvalError(f"{len(labels)} label(s) for {len(models)} model(s); give one --label per --model")
        if any(not label.strip() for label in labels) or len(set(labels)) != len(labels):
            raise EvalError(f"labels must be non-empty and unique, got {labels}")
        return labels
    names = [_default_name(m, i, depth=1) for i, m in enumerate(models)]
    for depth in (2, 3):
        clashing = {n for n in names if names.count(n) > 1}
        names = [_default_name(m, i, depth) if n in clashing else n for i, (m, n) in enumerate(zip(models, names))]
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if names.count(n) == 1 else f"{n}#{seen[n]}")
    return unique


def _default_name(model: ModelLike, index: int, depth: int) -> str:
    if isinstance(model, ModelAdapter):
        return f"{model.family}-{index + 1}"
    if isinstance(model, dict):
        return f"composed-{model.get('size', 'tiny')}-{index + 1}"
    text = str(model)
    if text.startswith("composed:"):
        return text  # a spec reads best as written
    path = Path(text)
    parts = (path.resolve() if path.exists() else path).parts  # a hub id "org/name" -> "name"
    return "/".join(parts[-depth:]) or text


# ---- outputs -----------------------------------------------------------------------------------------


def write_outputs(
    out_dir: str | Path, eval_set: EvalSet, config: EvalConfig, results: list[ModelResult], samples: list[dict],
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """samples.jsonl first, then results.json and results.md; returns results.json's content.
    ``split``: how the items were shared among processes (default: one did all)."""
    source = Path(eval_set.source)
    meta = {
        "task": eval_set.task, "data": str(source.absolute()) if source.exists() else eval_set.source,
        "data_format": eval_set.format, "n_items": len(eval_set.items), "limit": config.limit,
        "batch_size": config.batch_size, "max_new_tokens": config.new_tokens,
        "prompt_template": eval_set.prompt_template, "instructions": eval_set.instructions,
        "sample_score": SAMPLE_SCORE[eval_set.task], "models": [r.model for r in results],
        **(split or {"processes": 1, "items_per_process": [len(eval_set.items)]}),
        "taid_vlm_version": __version__, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    if eval_set.task == "caption":
        meta["caption_backend_requested"] = config.caption_backend
    if eval_set.task == "vqa":
        meta["vqa_rules"] = config.vqa_rules
    write_samples_jsonl(out_dir, samples)
    if isinstance(eval_set, BenchmarkSet):
        meta["benchmark"] = eval_set.describe()
        submissions = write_submissions(out_dir, eval_set, samples)
        for result in results:
            result.extra["submission"] = submissions.get(result.model)
    results_path = write_results_json(out_dir, results, meta)
    write_text_atomically(Path(out_dir) / RESULTS_MD, render_markdown(eval_set, config, results))
    return json.loads(results_path.read_text(encoding="utf-8"))


def render_markdown(eval_set: EvalSet, config: EvalConfig, results: list[ModelResult]) -> str:
    notes = [
        f"data: {eval_set.source} ({len(eval_set.items)} items, {eval_set.format} format)",
        f"prompt: {eval_set.prompt_template!r}",
        f"decoding: greedy, max_new_tokens {config.new_tokens}, batch {config.batch_size}, left padding",
        f"normaliser: {results[0].normalizer_version}",
    ]
    subject = eval_set.benchmark.title if isinstance(eval_set, BenchmarkSet) else eval_set.task
    text = render_results_md(results, title=f"{subject} evaluation", notes=notes)
    if isinstance(eval_set, BenchmarkSet):
        return text + benchmark_markdown(eval_set, results)
    if eval_set.task == "vqa":
        text += "\n" + _family_table(results)
    return text


def _family_table(results: list[ModelResult]) -> str:
    """Accuracy per question family: where a student keeps up with its teacher and where not."""
    families = results[0].extra.get("by_family", {})
    rows = [
        ModelResult(r.model, {f: g["accuracy"] for f, g in r.extra["by_family"].items()}, r.n, r.prompt, r.decoding)
        for r in results
    ]
    sizes = ", ".join(f"{f} {g['n']}" for f, g in families.items())
    return render_results_md(rows, title="VQA accuracy by question family", notes=[f"questions per family: {sizes}"])


# ---- progress ----------------------------------------------------------------------------------------


def _log(config: EvalConfig, message: str) -> None:
    if config.progress:
        print(f"[taid-vlm eval] {message}", file=sys.stderr, flush=True)


def _progress(config: EvalConfig, name: str):
    if not config.progress:
        return None
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 5.0:
            last[0] = now
            _log(config, f"{name}: {done}/{total} items")

    return report


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
