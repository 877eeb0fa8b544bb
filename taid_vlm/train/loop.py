"""The distillation loop: config -> models -> data -> steps -> checkpoints, metrics, student.

``distill`` is ``setup`` (models, sharding, data, optimizer, resume), one ``step`` per optimizer
step, and ``finish`` (rank check, saved student). What it gets right that peers are often asked
to fix:
- the loss is normalised by the response tokens of the whole optimizer step (every
  micro-batch, every rank), not per micro-batch;
- the loss is an object (taid_vlm/losses/base.py) that says what it needs and owns its state:
  the loop asks it, never its name, and reports whatever its ``metrics()`` say (TAID: t and
  t_linear, which move once per applied optimizer step from the all-reduced training loss, so
  every rank holds the same values) in the progress bar and metrics.jsonl;
- the teacher runs in eval mode without gradients, in its own dtype/device, and its outputs are
  dropped right after each micro-batch's loss;
- records are rendered for student and teacher in DataLoader workers (``num_workers``), off
  the step, and the data position in checkpoints counts only batches the loop trained on;
- no compute on padding: global batches group records of similar length (``group_by_length``,
  train/grouping.py) and ``packing`` lays records end to end in padding-free rows
  (models/packing.py), the loss seeing the same tokens in the same order either way;
- mixed precision is autocast over fp32 master weights (train/precision.py); several
  processes either replicate the student (torch DDP) or shard it (FSDP2), behind one strategy
  object (train/parallel.py) that the loop never asks which it is;
- a non-finite loss skips the step (logged with its record ids) and the run stops with a clear
  message after ``max_bad_steps`` of them;
- checkpoints are atomic, complete and sharded (DCP, every rank writes its part), and a resumed
  run continues exactly; SIGTERM or SIGUSR1 ends the run after the current step with a
  checkpoint of it (train/stopping.py).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import get_scheduler

from ..data import Record, detect_format, iter_hf_records, load_records, open_records
from ..data.table import SAMPLE_ROWS, TABLE_FORMATS
from ..errors import RunError, Stopped, is_disk_full
from ..losses import Loss
from ..models import ModelAdapter, check_alignment, check_vocab_compatible, is_composed_spec
from ..models.checkpointing import enable_gradient_checkpointing
from ..models.lora import LoraStudent, apply_lora
from ..models.loading import resolve_dtype
from .checkpoint import CHECKPOINT_DIR, TrainerState, load_newest_intact, save_checkpoint
from .config import ConfigError, DistillConfig
from .cross_tokenizer import CrossTokenizer
from .data import MicroBatch, MicroBatches, RenderCollator, StreamBatches
from .diagnose import likely_cause, nothing_applied, too_many_bad_steps
from .metrics import MetricsLog, Progress
from .objective import LossParts, training_loss
from .parallel import Distributed, Strategy, strategy_for
from .output import RunOutput
from .precision import Precision
from .preflight import check_data, check_devices, check_packing, check_pair, load_model, set_attention
from .responses import on_policy_batch, teacher_responses
from .stopping import StopRequests, interrupts_deferred
from .teacher import CachedTeacher, LiveTeacher, ServedTeacher, open_teacher_cache, routes, select_records
from .generator import Generator, open_generator, open_served_teacher

VISION_MODULE_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder", "vision")

__all__ = ["DistillResult", "Distributed", "distill", "setup", "step", "finish"]


@dataclass
class DistillResult:
    output: Path
    student_dir: Path
    steps: int
    final_loss: float | None
    final_metrics: dict[str, float]  # the loss's metrics() at the end (TAID: t, t_linear)
    seconds: float
    is_main: bool = True


@dataclass
class Run:
    """Everything one distillation holds between steps (built by ``setup``)."""

    config: DistillConfig
    env: Distributed
    out: Path
    started: float
    student: ModelAdapter
    teacher: ModelAdapter | None
    teacher_signal: Any  # a TeacherSignal (train/teacher.py) or None for sft
    strategy: Strategy  # one process, ddp or fsdp: placement, gradient reduction, state (train/parallel.py)
    precision: Precision
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    loss: Loss  # the loss object: per-chunk math, per-step hook, its own state and modules
    extra_modules: dict[str, Any]
    state: TrainerState
    data: Any  # MicroBatches, or StreamBatches for a streamed set (train/data.py)
    collator: RenderCollator
    log: MetricsLog
    progress: Progress
    config_yaml: str
    run_output: RunOutput  # the output directory's life: claimed, committed at the first applied step (train/output.py)
    lora: LoraStudent | None = None  # a LoRA student (lora_r > 0): its adapters, merge and saving
    last_loss: float | None = None
    last_kd: float = float("nan")
    last_ce: float = float("nan")
    steps_this_run: int = 0
    saved_step: int = -1  # the step of the newest checkpoint this run wrote
    routed: dict[str, Any] | None = None  # tag -> teacher signal, with ``teachers`` (train/teacher.py routes)
    teacher_stats: dict[str, list[float]] | None = None  # tag -> [kd sum, tokens] of the current step
    generator: Generator | None = None  # on-policy samples from a vLLM server (generation_backend=vllm)
    cross_tokenizer: CrossTokenizer | None = None  # a pair with two tokenizers (train/cross_tokenizer.py)


def distill(config: DistillConfig) -> DistillResult:
    """Check everything that can be checked, then train; a failure before the first applied step
    leaves the output directory as it was (train/output.py)."""
    env = Distributed()
    run_output = RunOutput(config, is_main=env.is_main, barrier=env.barrier)  # looks only
    try:
        with StopRequests() as stop:
            run = setup(config, env, run_output)
            try:
                while run.state.step < config.max_steps:
                    step(run)
                    if stop.requested(env) and run.state.step < config.max_steps:
                        _stop(run, stop.name)
            finally:
                run.data.close()
        return finish(run)
    except BaseException:
        run_output.abandon()
        raise


def _stop(run: Run, signal_name: str) -> None:
    """A stop signal: checkpoint the step just finished (unless it was saved) and end the run."""
    if run.saved_step != run.state.step:
        _save_checkpoint(run)
    run.progress.close()
    run.log.close()
    where = run.out / CHECKPOINT_DIR / f"step-{run.state.step:07d}"
    message = (f"stopped by {signal_name} after step {run.state.step}: checkpoint {where}; continue with the same "
               "command plus --resume") if run.env.is_main else ""
    raise Stopped(message)


# ---- setup ----------------------------------------------------------------------------------------


def setup(config: DistillConfig, env: Distributed | None = None, run_output: RunOutput | None = None,
          strategy: Strategy | None = None) -> Run:
    """Inputs first (devices, records, models, data against the models), all read-only; only then
    the output directory is claimed, and the run built. ``strategy``: how the processes share the
    student (default: ``config.distributed``; a benchmark may bring its own)."""
    started = time.perf_counter()
    env = env or Distributed()
    run_output = run_output or RunOutput(config, is_main=env.is_main, barrier=env.barrier)
    out = Path(config.output)
    check_devices(config, env.device)
    # before the models: a broken data file fails in seconds (a stream: its first records are checked)
    records, stream = _training_stream(config) if config.streaming else (_training_records(config), None)
    _seed_everything(config.seed)

    teacher, student = _load_models(config, env)
    set_attention(config, student, teacher)
    lora = _apply_lora(config, student)
    served = open_served_teacher(config, student)  # teacher_server: checked now (name, vocabulary), before any write
    routed = _routed_teachers(config, student, records, env)
    generator = open_generator(config, student, env)
    cached = cache = None
    if config.teacher_cache:  # the teacher's signal comes from disk; records are checked against it (read-only)
        cache, loaded = open_teacher_cache(config.teacher_cache, config.teacher, config.max_length, config.responses, records)
        cached, records = CachedTeacher(cache, records, env.device), loaded
    cross = CrossTokenizer.for_run(config, student, teacher, cache) if config.needs_teacher else None
    check_data(config, records, env.world_size, student, teacher or served)  # after the pair's tokenizers are checked
    check_packing(config, student, teacher)
    run_output.claim()  # the first write: everything above only read
    if config.responses == "teacher" and cached is None:
        cache, answering = out / "teacher_responses.jsonl", teacher or served
        if env.is_main:
            teacher_responses(answering, records, cache, config.batch_size, config.generation_max_new_tokens, config.progress)
        env.barrier()
        records = teacher_responses(answering, records, cache, config.batch_size, config.generation_max_new_tokens, False)
    teacher_signal = None
    if config.needs_teacher and routed is None:
        teacher_signal = cached or (ServedTeacher(served, env.device) if served is not None else None) or \
            LiveTeacher(teacher, env.device, return_hidden=config.chunked)
    strategy = strategy or strategy_for(config, env)
    _place(config, strategy, student, teacher)

    params = [p for p in student.model.parameters() if p.requires_grad]
    loss = config.make_loss().to(env.device)
    optimizer = _optimizer(student.model, config, _loss_parameters(loss))
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps)
    precision = Precision(config.mixed_precision, env.device)
    extra_modules = {**loss.modules(), **precision.checkpoint_modules()}

    state = TrainerState()
    if run_output.resume_candidates:
        _, state = load_newest_intact(run_output.resume_candidates, module=strategy.state_module(loss.modules()),
                                      optimizer=optimizer, lr_scheduler=lr_scheduler, extra_modules=extra_modules,
                                      rank=env.rank, world_size=env.world_size,
                                      other_world_size=config.resume_accept_changes, seed=config.seed,
                                      trainable_only=lora is not None)
        if state.loss_state:
            loss.load_state_dict(state.loss_state)
    else:
        random.seed(config.seed + env.rank)
        torch.manual_seed(config.seed + env.rank)  # samples differ per rank; weights were broadcast

    config_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False)  # written once the first step is applied
    renders_teacher = getattr(teacher_signal, "adapter", None)  # a live teacher: render its inputs in workers too
    # packed rows for the models run here; a served teacher is sent each record's own tokens
    collator = RenderCollator(student, renders_teacher, config.max_length, pack=config.packing,
                              pack_teacher=config.packing and teacher is not None)
    grouping = config.group_window if config.group_by_length else None
    if stream is not None:
        data: MicroBatches | StreamBatches = StreamBatches(stream, collator, config.batch_size, env.rank, env.world_size,
                                                           state.epoch, state.position, config.skip_bad,
                                                           group_window=grouping, grad_accum=config.grad_accum,
                                                           seed=config.seed)
    else:
        data = MicroBatches(records, collator, config.batch_size, config.seed, env.rank, env.world_size, state.epoch,
                            state.position, num_workers=config.num_workers, skip_bad=config.skip_bad,
                            group_window=grouping, grad_accum=config.grad_accum)
    log = MetricsLog(out / "metrics.jsonl", resume_step=state.step, enabled=env.is_main,
                     tensorboard_dir=out / "tensorboard" if config.tensorboard else None)
    progress = Progress(config.max_steps, state.step, enabled=config.progress and env.is_main)
    return Run(config, env, out, started, student, teacher, teacher_signal, strategy, precision, params, optimizer,
               lr_scheduler, loss, extra_modules, state, data, collator, log, progress, config_yaml, run_output,
               routed=routed, generator=generator, lora=lora, cross_tokenizer=cross)


def _load_models(config: DistillConfig, env: Distributed) -> tuple[ModelAdapter | None, ModelAdapter]:
    teacher = None
    served = config.teacher_cache or config.teacher_server or config.teachers
    if not served and (config.needs_teacher or config.responses == "teacher"):
        teacher = load_model("teacher", config.teacher, dtype=None if config.teacher_dtype == "auto" else config.teacher_dtype,
                             device=config.teacher_device or env.device, chat_template=config.teacher_chat_template)
    # A student built from parts shares the teacher's tokenizer (the vocabularies must match).
    shared_tokenizer = {"tokenizer": teacher.tokenizer} if teacher is not None and is_composed_spec(config.student) else {}
    student = load_model("student", config.student, dtype=config.student_dtype, device=env.device,
                         chat_template=config.student_chat_template, **shared_tokenizer)
    if teacher is not None:
        if config.cross_tokenizer == "off":
            check_vocab_compatible(teacher, student)
        check_pair(config, teacher, student)
    return teacher, student


def _apply_lora(config: DistillConfig, student: ModelAdapter) -> LoraStudent | None:
    """lora_r > 0: peft adapters injected into the student (before any placement: every rank
    starts from rank 0's adapters too); only they train."""
    settings = config.lora_settings()
    if settings is None:
        return None
    base = str(Path(config.student).resolve()) if Path(config.student).is_dir() else config.student
    return apply_lora(student, settings, base=base, chunked=config.chunked)


def _routed_teachers(config: DistillConfig, student: ModelAdapter, records: list, env: Distributed) -> dict[str, Any] | None:
    """``teachers``: tag -> its signal (a folder loads locally, a URL is a server); every record's tag
    checked now."""
    if not config.teachers:
        return None
    from ..teacher_server import is_url, open_served

    tags = list(config.teachers)
    routes(records, tags)  # every record carries a known tag, or one error naming it
    signals: dict[str, Any] = {}
    for tag, source in config.teachers.items():
        if is_url(source):
            served = open_served(None, source, top_k=config.teacher_top_k, timeout=config.teacher_server_timeout)
            check_vocab_compatible(served.adapter, student)
            signals[tag] = ServedTeacher(served, env.device)
        else:
            adapter = load_model("teacher", source, dtype=None if config.teacher_dtype == "auto" else config.teacher_dtype,
                                 device=config.teacher_device or env.device, chat_template=config.teacher_chat_template)
            check_vocab_compatible(adapter, student)
            signals[tag] = LiveTeacher(adapter, env.device, return_hidden=config.chunked)
    return signals


def _place(config: DistillConfig, strategy: Strategy, student: ModelAdapter, teacher: ModelAdapter | None) -> None:
    """Freezing and activation checkpointing, then the strategy's placement (the same weights on
    every rank, wrapped or sharded)."""
    if config.freeze_vision:
        _freeze_vision(student.model)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(student.model)
    student.model.train()
    strategy.place(student, teacher)


# ---- one optimizer step ---------------------------------------------------------------------------


def step(run: Run) -> None:
    """One optimizer step: take micro-batches, forward/backward each, reduce, update, record."""
    config, env, state = run.config, run.env, run.state
    step_started = time.perf_counter()
    before = run.loss.metrics()  # the loss's values at the start of the step (TAID: t, t_linear)

    micro_batches = _take_micro_batches(run)
    run.teacher_stats = {tag: [0.0, 0.0] for tag in run.routed} if run.routed else None
    global_tokens = int(env.sum(torch.tensor(float(sum(mb.student.num_response_tokens for mb in micro_batches)),
                                             device=env.device)).item())
    temperature = run.loss.temperature(state.step, config.max_steps)
    sums = torch.zeros(3, dtype=torch.float64, device=env.device)  # total, kd, ce
    for i, mb in enumerate(micro_batches):
        with run.strategy.micro_batch(last=i == len(micro_batches) - 1):  # ddp: reduce on the last only
            parts = _micro_batch_loss(run, mb, global_tokens, temperature)
            run.precision.backward(parts.total)
        sums += torch.stack([_value(parts.total), _value(parts.kd), _value(parts.ce)]).to(sums.device)
        del parts
    total, kd, ce = env.sum(sums).tolist()
    run.last_kd, run.last_ce = kd, ce

    row: dict[str, Any] = {"step": state.step + 1, "epoch": state.epoch}
    if math.isfinite(total):
        grad_norm = _apply_update(run, kd)
    else:
        grad_norm = _skip_step(run, total, micro_batches, row)

    state.step += 1
    run.steps_this_run += 1
    state.tokens_seen += global_tokens
    state.epoch, state.position = run.data.epoch, run.data.position
    state.loss_state = run.loss.state_dict() or None
    elapsed = time.perf_counter() - step_started
    tokens_per_s = global_tokens / max(elapsed, 1e-9)
    run.last_loss = total
    loss = run.loss
    row.update(loss=total, kd_loss=kd if loss.uses_kd(config.distil_ratio) else None,
               ce_loss=ce if loss.uses_ce(config.distil_ratio) else None,
               lr=run.lr_scheduler.get_last_lr()[0], grad_norm=grad_norm, tokens=global_tokens, tokens_per_s=tokens_per_s,
               seconds=elapsed)
    row.update(loss.step_metrics(before))
    row.update(_teacher_metrics(run, global_tokens))
    if run.cross_tokenizer is not None:
        row.update(run.cross_tokenizer.step_metrics(env.sum))
    if state.step % config.log_every == 0 or state.step == config.max_steps or state.step == 1:
        run.log.log(row)
    run.progress.update(total, before, tokens_per_s)
    if state.step % config.save_every == 0 or state.step == config.max_steps:
        _save_checkpoint(run)


def _take_micro_batches(run: Run) -> list[MicroBatch]:
    """This step's rendered micro-batches on their devices (on-policy ones re-rendered here)."""
    config, student, teacher = run.config, run.student, run.teacher
    micro_batches = [run.data.next() for _ in range(config.grad_accum)]
    if config.on_policy > 0 and _on_policy_this_step(config, run.state.step):
        sampler, seed = student, {}
        if run.generator is not None:  # vLLM: the server holds the weights of the last sync (train/generator.py)
            sampler, seed = run.generator.sampler(run.student, run.state.step), {"seed": config.seed * 7_919 + run.state.step}
        micro_batches = [run.collator(on_policy_batch(sampler, mb.records, config.generation_max_new_tokens,
                                                      config.generation_temperature, **seed)) for mb in micro_batches]
    teacher_device = teacher.device if teacher is not None else None
    teacher_dtype = teacher.dtype if teacher is not None else None
    return [mb.to(student.device, teacher_device, student.dtype, teacher_dtype) for mb in micro_batches]


def _micro_batch_loss(run: Run, mb: MicroBatch, global_tokens: int, temperature: Any) -> LossParts:
    """Student and teacher forward under autocast, then the loss (normalised by the step's global tokens)."""
    config = run.config
    if run.routed is not None:
        return _routed_loss(run, mb, global_tokens, temperature)
    with run.precision.autocast():
        student_out = run.student.response_outputs(mb.student, return_hidden=config.chunked)
        teacher_out = None
        if run.teacher_signal is not None:
            pre_rendered = {"batch": mb.teacher} if mb.teacher is not None else {}
            teacher_out = run.teacher_signal.outputs(mb.records, **pre_rendered)
            if run.cross_tokenizer is not None:
                teacher_out = run.cross_tokenizer.teacher_outputs(student_out, teacher_out, mb.records)
            else:
                teacher_out = check_alignment(teacher_out, student_out, mb.records, tokenizer=run.student.tokenizer)
        return training_loss(run.loss, student_out, teacher_out, num_tokens=max(global_tokens, 1),
                             distil_ratio=config.distil_ratio, options=config.engine_options(), temperature=temperature)


def _routed_loss(run: Run, mb: MicroBatch, global_tokens: int, temperature: Any) -> LossParts:
    """Several teachers: the student runs once over the micro-batch, then each teacher's records
    are compared with that teacher's signal; the terms add up (each normalised by the step's
    tokens, so the sum is the loss of the whole micro-batch)."""
    config, total, kd, ce = run.config, 0, None, None
    with run.precision.autocast():
        student_out = run.student.response_outputs(mb.student, return_hidden=config.chunked)
        for tag, positions in routes(mb.records, list(run.routed)).items():
            records = [mb.records[i] for i in positions]
            student_part = select_records(student_out, positions)
            teacher_out = check_alignment(run.routed[tag].outputs(records), student_part, records,
                                          tokenizer=run.student.tokenizer)
            parts = training_loss(run.loss, student_part, teacher_out, num_tokens=max(global_tokens, 1),
                                  distil_ratio=config.distil_ratio, options=config.engine_options(), temperature=temperature)
            total = total + parts.total
            kd = parts.kd if kd is None else (kd + parts.kd if parts.kd is not None else kd)
            ce = parts.ce if ce is None else (ce + parts.ce if parts.ce is not None else ce)
            stats = run.teacher_stats[tag]
            stats[0] += float(_value(parts.kd if parts.kd is not None else parts.total))
            stats[1] += student_part.num_tokens
    return LossParts(total=total, kd=kd, ce=ce)


def _teacher_metrics(run: Run, global_tokens: int) -> dict[str, float]:
    """``loss/TAG`` (the distillation loss per token of that teacher's records) and ``tokens/TAG``,
    summed over micro-batches and ranks."""
    if not run.teacher_stats:
        return {}
    tags = list(run.teacher_stats)
    sums = run.env.sum(torch.tensor([run.teacher_stats[t] for t in tags], dtype=torch.float64, device=run.env.device))
    row = {}
    for tag, (kd_sum, tokens) in zip(tags, sums.tolist()):
        row[f"loss/{tag}"] = kd_sum * max(global_tokens, 1) / tokens if tokens else None
        row[f"tokens/{tag}"] = int(tokens)
    return row


def _apply_update(run: Run, kd: float) -> float:
    """Finish the reduction (the student's gradients were reduced during backward), clip, step; the grad norm."""
    config = run.config
    run.strategy.reduce_gradients(_loss_parameters(run.loss))
    run.precision.unscale(run.optimizer)
    grad_norm = float("nan")
    if config.grad_clip > 0:
        grad_norm = run.strategy.clip(run.params, config.grad_clip)
    run.precision.step(run.optimizer)
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.loss.on_step(run.state.step, config.max_steps, kd)
    run.run_output.started(run.config_yaml)  # the first applied step commits the output (writes config.yaml)
    return grad_norm


def _skip_step(run: Run, total: float, micro_batches: list[MicroBatch], row: dict[str, Any]) -> float:
    config, state = run.config, run.state
    run.optimizer.zero_grad(set_to_none=True)
    state.bad_steps += 1
    ids = [r.id for mb in micro_batches for r in mb.records]
    warnings.warn(f"step {state.step + 1}: non-finite loss {total}; step skipped (records {ids[:20]})", stacklevel=1)
    row.update(skipped=True, records=ids, loss=total)
    if state.bad_steps > config.max_bad_steps:
        run.log.log(row)
        cause = likely_cause(config, run.last_kd, run.last_ce, run.params, state.step - state.bad_steps + 1)
        raise too_many_bad_steps(config, state.bad_steps, state.step + 1, ids, cause)
    return float("nan")


def _save_checkpoint(run: Run) -> None:
    """Collective: every rank writes its part of the weights and optimizer state; a Ctrl-C waits for it."""
    with interrupts_deferred():
        save_checkpoint(run.out, module=run.strategy.state_module(run.loss.modules()), optimizer=run.optimizer,
                        lr_scheduler=run.lr_scheduler, state=run.state, extra_modules=run.extra_modules,
                        config_yaml=run.config_yaml, rank=run.env.rank, world_size=run.env.world_size,
                        barrier=run.env.barrier, keep=run.config.keep_checkpoints,
                        trainable_only=run.lora is not None)
        run.saved_step = run.state.step


# ---- finish ---------------------------------------------------------------------------------------


def finish(run: Run) -> DistillResult:
    """Close logs, check that ranks agree, save the student atomically."""
    run.progress.close()
    run.log.close()
    if run.generator is not None:
        run.generator.close()
    if run.steps_this_run and not run.run_output.committed:
        raise nothing_applied(run.config, run.steps_this_run, likely_cause(run.config, run.last_kd, run.last_ce, run.params, 0))
    env = run.env
    full_state = run.strategy.full_state()  # collective: a sharded student is gathered on rank 0
    _check_ranks_agree(env, run.strategy, run.strategy.weights_digest(full_state), run.loss, run.out)
    student_dir = run.out / "student"
    if env.is_main:
        _save_student_atomically(student_dir, _student_saver(run, full_state))
    env.barrier()
    return DistillResult(run.out, student_dir, run.state.step, run.last_loss, run.loss.metrics(),
                         time.perf_counter() - run.started, env.is_main)


def _student_saver(run: Run, full_state: dict[str, torch.Tensor] | None) -> Callable[[Path], None]:
    """What writes the student folder: the model (a LoRA student merged), or peft's adapter folder."""
    lora, state = run.lora, _state_to_save(run, full_state)
    if lora is not None and run.config.save_adapter_only:
        return lambda out: lora.save_adapter(out, run.student, state)
    return lambda out: run.student.save(out, state_dict=state)


def _state_to_save(run: Run, full_state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """The student's weights to ship: gathered (fsdp), a LoRA student merged (unless only its
    adapter ships), and/or cast to ``save_dtype``; None = as is."""
    dtype = resolve_dtype(run.config.save_dtype)
    if run.lora is not None and not run.config.save_adapter_only:
        full_state = run.lora.merged_state(full_state)
    if dtype is None:
        return full_state
    state = full_state if full_state is not None else run.student.model.state_dict()
    cast: dict[int, torch.Tensor] = {}  # tied weights stay one tensor
    return {k: cast.setdefault(id(v), v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


# ---- helpers ------------------------------------------------------------------------------------


def _value(x: torch.Tensor | None) -> torch.Tensor:
    if x is None:
        return torch.zeros((), dtype=torch.float64)
    return x.detach().to("cpu", torch.float64)


def _loss_parameters(loss: Loss) -> list[torch.nn.Parameter]:
    """The loss's own trainable parameters (CTKD's temperature), trained and reduced with the student's."""
    return [p for module in loss.modules().values() for p in module.parameters()]


def _on_policy_this_step(config: DistillConfig, step: int) -> bool:
    """Decided by (seed, step) alone: identical on every rank and after a resume."""
    return random.Random(config.seed * 7_919 + step).random() < config.on_policy


def _training_records(config: DistillConfig) -> Sequence[Record]:
    """The training set: a ``RecordTable`` (read on access, data/table.py) for LLaVA and chat files,
    a list otherwise; checked per ``validate_images`` before the output is touched."""
    fmt = detect_format(config.data) if config.data_format == "auto" else config.data_format
    if fmt in TABLE_FORMATS:
        return open_records(config.data, fmt, skip_bad=config.skip_bad, validate_images=config.validate_images,
                            limit=config.data_limit)
    hf_options = {"split": config.data_split} if fmt == "hf" else {}
    check = {"all": "open", "sample": "exists", "none": "none"}[config.validate_images]
    return load_records(config.data, format=fmt, skip_bad=config.skip_bad, limit=config.data_limit,
                        check_images=check, **hf_options)


def _training_stream(config: DistillConfig) -> tuple[list[Record], Callable[[int, int], Iterator[Record]]]:
    """A streamed Hugging Face set: its first records (checked like a table's sample) and how to open an
    epoch from a position. Epoch e is the set through a shuffle buffer seeded by (seed, e); resuming skips
    the rows already taken before decoding any (with skip_bad, rows that were dropped count too, so the
    records taken are counted from the epoch's start instead)."""
    options: dict[str, Any] = dict(split=config.data_split, streaming=True, skip_bad=config.skip_bad)
    check = "none" if config.validate_images == "none" else "open"
    sample = list(itertools.islice(iter_hf_records(config.data, check_images=check, **options), SAMPLE_ROWS))

    def open_stream(epoch: int, position: int) -> Iterator[Record]:
        seed = config.seed * 1_000_003 + epoch
        if config.skip_bad:
            rows = iter_hf_records(config.data, check_images="none", shuffle_seed=seed, **options)
            return itertools.islice(rows, position, None)
        return iter_hf_records(config.data, check_images="none", shuffle_seed=seed, skip=position, **options)

    return sample, open_stream


def _optimizer(model: torch.nn.Module, config: DistillConfig, loss_parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if loss_parameters:
        groups.append({"params": loss_parameters, "weight_decay": 0.0})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def _freeze_vision(model: torch.nn.Module) -> None:
    frozen = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in VISION_MODULE_NAMES:
            for p in module.parameters():
                p.requires_grad_(False)
                frozen += 1
    if frozen == 0:
        raise ConfigError(f"freeze_vision=true but {type(model).__name__} has no vision module named one of {VISION_MODULE_NAMES}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_ranks_agree(env: Distributed, strategy: Strategy, digest: str | None, loss: Loss, out: Path) -> None:
    """Every rank must end with the same weights and the same loss values; ``ranks.json`` records it.

    Drifting ranks are the silent failure of data-parallel distillation (the TAID reference
    kept t per GPU); a run that drifted stops here with an error instead of saving a student.
    A sharded (fsdp) student exists once, gathered on rank 0: its digest is rank 0's alone, and
    the ranks must agree on the loss's ``metrics()`` (TAID's t).
    """
    mine = {"rank": env.rank, "sharded": strategy.sharded, "weights_sha256": digest, **loss.metrics()}
    everyone = env.gather_objects(mine)
    if env.is_main:
        (out / "ranks.json").write_text(json.dumps(everyone, indent=1))
    loss_values = [{k: v for k, v in r.items() if k not in ("rank", "weights_sha256")} for r in everyone]
    if len({r["weights_sha256"] for r in everyone if r["weights_sha256"]}) > 1 or any(v != loss_values[0] for v in loss_values):
        raise RuntimeError(f"ranks disagree at the end of the run (see {out / 'ranks.json'}): {everyone}")


def _save_student_atomically(target: Path, save: Callable[[Path], None]) -> None:
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise RunError(f"no space left on the device of {target.parent} while saving the student; the partial "
                           "copy was removed and the last checkpoint holds the trained weights. Free space there "
                           "and run the same command with --resume to save it") from e
        raise
    old = target.parent / f".old-{target.name}"
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
