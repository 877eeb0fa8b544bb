"""The distillation loop: config -> models -> data -> steps -> checkpoints, metrics, student.

What it gets right that peers are often asked to fix:
- the loss is normalised by the response tokens of the whole optimizer step (every
  micro-batch, every rank), not per micro-batch;
- TAID's t moves once per optimizer step, from the all-reduced training loss, so every rank
  holds the same t; both t and t_linear are logged;
- the teacher runs in eval mode without gradients, in its own dtype/device, and its outputs are
  dropped right after each micro-batch's loss;
- a non-finite loss skips the step (logged with its record ids) and the run stops with a clear
  message after ``max_bad_steps`` of them;
- checkpoints are atomic and complete, and a resumed run continues exactly.

Data parallelism: every rank holds the full student; after the backward passes of a step the
gradients are summed across ranks (each rank's loss is already divided by the GLOBAL token
count, so the sum is the gradient of the global mean). This works whatever module the adapter
calls inside the model, which a wrapper-based DDP cannot promise.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from transformers import get_scheduler

from ..data import detect_format, load_records
from ..data.truncate import fit_prompt
from ..errors import RunError, is_disk_full
from ..losses import CTKDTemperature, TAIDSchedule
from ..models import ModelAdapter, check_alignment, check_vocab_compatible, is_composed_spec
from .batches import BatchStream
from .checkpoint import TrainerState, load_newest_intact, save_checkpoint
from .config import ConfigError, DistillConfig
from .diagnose import likely_cause, nothing_applied, too_many_bad_steps
from .metrics import MetricsLog, Progress
from .objective import training_loss
from .output import RunOutput
from .preflight import check_data, check_devices, check_pair, load_model
from .responses import on_policy_batch, teacher_responses
from .teacher import LiveTeacher

VISION_MODULE_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder", "vision")


@dataclass
class DistillResult:
    output: Path
    student_dir: Path
    steps: int
    final_loss: float | None
    final_t: float | None
    seconds: float
    is_main: bool = True


class Distributed:
    """The few collectives the loop needs; a no-op on one process."""

    def __init__(self) -> None:
        from accelerate import PartialState

        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index
        self.world_size = self.state.num_processes
        self.device = self.state.device
        self.is_main = self.state.is_main_process

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        if self.active:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # every rank must contribute the same tensors
        grads = [p.grad for p in params]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)


def distill(config: DistillConfig) -> DistillResult:
    """Check everything that can be checked, then train; a failure before the first applied
    step leaves the output directory as it was (train/output.py)."""
    env = Distributed()
    run_output = RunOutput(config, is_main=env.is_main, barrier=env.barrier)  # looks only
    try:
        return _distill(config, env, run_output)
    except BaseException:
        run_output.abandon()
        raise


def _distill(config: DistillConfig, env: Distributed, run_output: RunOutput) -> DistillResult:
    started = time.perf_counter()
    out = Path(config.output)
    check_devices(config, env.device)
    records = _training_records(config)  # before the models: a broken data file fails in seconds
    _seed_everything(config.seed)

    teacher = None
    if config.needs_teacher or config.responses == "teacher":
        teacher = load_model("teacher", config.teacher, dtype=None if config.teacher_dtype == "auto" else config.teacher_dtype,
                             device=config.teacher_device or env.device, chat_template=config.teacher_chat_template)
    # A student built from parts shares the teacher's tokenizer (the vocabularies must match).
    shared_tokenizer = {"tokenizer": teacher.tokenizer} if teacher is not None and is_composed_spec(config.student) else {}
    student = load_model("student", config.student, dtype=config.student_dtype, device=env.device,
                         chat_template=config.student_chat_template, **shared_tokenizer)
    if teacher is not None:
        check_vocab_compatible(teacher, student)
        check_pair(config, teacher, student)
    env.broadcast_parameters(student.model)
    if config.freeze_vision:
        _freeze_vision(student.model)
    student.model.train()

    check_data(config, records, env.world_size, student, teacher)
    run_output.claim()  # the first write: everything above only read
    if config.responses == "teacher":
        cache = out / "teacher_responses.jsonl"
        if env.is_main:
            teacher_responses(teacher, records, cache, config.batch_size, config.generation_max_new_tokens, config.progress)
        env.barrier()
        records = teacher_responses(teacher, records, cache, config.batch_size, config.generation_max_new_tokens, False)
    teacher_signal = LiveTeacher(teacher, env.device, return_hidden=config.chunked) if config.needs_teacher else None

    params = [p for p in student.model.parameters() if p.requires_grad]
    ctkd = CTKDTemperature(initial=max(config.temperature, 1.0) + 1e-3).to(env.device) if config.loss == "ctkd" else None
    optimizer = _optimizer(student.model, config, ctkd)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps)
    schedule = None
    if config.loss == "taid":
        schedule = TAIDSchedule(config.max_steps, t_start=config.t_start, t_end=config.t_end, alpha=config.taid_alpha,
                                beta=config.taid_beta, adaptive=config.taid_adaptive, alpha_per_run=config.taid_alpha_per_run)
    extra_modules = {"ctkd_temperature": ctkd} if ctkd is not None else {}

    state = TrainerState()
    if run_output.resume_candidates:
        _, state = load_newest_intact(run_output.resume_candidates, model=student.model, optimizer=optimizer,
                                      lr_scheduler=lr_scheduler, extra_modules=extra_modules, rank=env.rank,
                                      world_size=env.world_size)
        if schedule is not None and state.schedule is not None:
            schedule.load_state_dict(state.schedule)
    else:
        random.seed(config.seed + env.rank)
        torch.manual_seed(config.seed + env.rank)  # samples differ per rank; weights were broadcast

    config_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False)  # written once the first step is applied
    stream = BatchStream(records, config.batch_size, config.seed, env.rank, env.world_size, state.epoch, state.position)
    log = MetricsLog(out / "metrics.jsonl", resume_step=state.step, enabled=env.is_main,
                     tensorboard_dir=out / "tensorboard" if config.tensorboard else None)
    progress = Progress(config.max_steps, state.step, enabled=config.progress and env.is_main)
    last_loss = None
    steps_this_run = 0

    while state.step < config.max_steps:
        step_started = time.perf_counter()
        t_now = schedule.t if schedule is not None else None
        t_linear_now = schedule.t_linear if schedule is not None else None
        micro_batches = [stream.next_batch() for _ in range(config.grad_accum)]
        if config.on_policy > 0 and _on_policy_this_step(config, state.step):
            micro_batches = [on_policy_batch(student, mb, config.generation_max_new_tokens, config.generation_temperature)
                             for mb in micro_batches]
        if config.max_length:
            micro_batches = [[_fit(r, student, teacher, config.max_length) for r in mb] for mb in micro_batches]
        rendered = [student.render(mb, max_length=config.max_length) for mb in micro_batches]
        local_tokens = sum(b.num_response_tokens for b in rendered)
        global_tokens = int(env.sum(torch.tensor(float(local_tokens), device=env.device)).item())
        temperature = ctkd(config.ctkd_lambda_max * _ramp(state.step, config.max_steps)) if ctkd is not None else config.temperature
        sums = torch.zeros(3, dtype=torch.float64, device=env.device)  # total, kd, ce
        for records_mb, batch in zip(micro_batches, rendered):
            student_out = student.response_outputs(batch, return_hidden=config.chunked)
            teacher_out = teacher_signal.outputs(records_mb) if teacher_signal is not None else None
            if teacher_out is not None:
                teacher_out = check_alignment(teacher_out, student_out, records_mb, tokenizer=student.tokenizer)
            parts = training_loss(config.loss, student_out, teacher_out, num_tokens=max(global_tokens, 1),
                                  distil_ratio=config.distil_ratio, chunked=config.chunked, chunk_size=config.chunk_size,
                                  temperature=temperature, params=_loss_params(config, t_now))
            parts.total.backward()
            sums += torch.stack([_value(parts.total), _value(parts.kd), _value(parts.ce)]).to(sums.device)
            del student_out, teacher_out, parts
        env.sum_gradients(params + (list(ctkd.parameters()) if ctkd is not None else []))
        total, kd, ce = env.sum(sums).tolist()

        row = {"step": state.step + 1, "epoch": state.epoch}
        if not math.isfinite(total):
            optimizer.zero_grad(set_to_none=True)
            state.bad_steps += 1
            ids = [r.id for mb in micro_batches for r in mb]
            warnings.warn(f"step {state.step + 1}: non-finite loss {total}; step skipped (records {ids[:20]})", stacklevel=1)
            row.update(skipped=True, records=ids, loss=total)
            if state.bad_steps > config.max_bad_steps:
                log.log(row)
                cause = likely_cause(config, kd, ce, params, state.step - state.bad_steps + 1)
                raise too_many_bad_steps(config, state.bad_steps, state.step + 1, ids, cause)
            grad_norm = float("nan")
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip)) if config.grad_clip > 0 else float("nan")
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if schedule is not None:
                schedule.step(kd)
            run_output.started(config_yaml)
        state.step += 1
        steps_this_run += 1
        state.tokens_seen += global_tokens
        state.epoch, state.position = stream.epoch, stream.position
        state.schedule = schedule.state_dict() if schedule is not None else None
        elapsed = time.perf_counter() - step_started
        tokens_per_s = global_tokens / max(elapsed, 1e-9)
        last_loss = total
        row.update(loss=total, kd_loss=kd if parts_has(config, "kd") else None, ce_loss=ce if parts_has(config, "ce") else None,
                   lr=lr_scheduler.get_last_lr()[0], grad_norm=grad_norm, tokens=global_tokens, tokens_per_s=tokens_per_s,
                   seconds=elapsed)
        if schedule is not None:
            row.update(t=t_now, t_linear=t_linear_now, t_next=schedule.t)
        if ctkd is not None:
            row.update(temperature=float(temperature.detach()))
        if state.step % config.log_every == 0 or state.step == config.max_steps or state.step == 1:
            log.log(row)
        progress.update(total, t_now, tokens_per_s)
        if state.step % config.save_every == 0 or state.step == config.max_steps:
            save_checkpoint(out, model=student.model, optimizer=optimizer, lr_scheduler=lr_scheduler, state=state,
                            extra_modules=extra_modules, config_yaml=config_yaml, rank=env.rank,
                            world_size=env.world_size, barrier=env.barrier, keep=config.keep_checkpoints)
    progress.close()
    log.close()
    if steps_this_run and not run_output.committed:
        raise nothing_applied(config, steps_this_run, likely_cause(config, kd, ce, params, 0))
    _check_ranks_agree(env, student.model, schedule, out)

    student_dir = out / "student"
    if env.is_main:
        _save_student_atomically(student, student_dir)
    env.barrier()
    return DistillResult(out, student_dir, state.step, last_loss, schedule.t if schedule else None,
                         time.perf_counter() - started, env.is_main)


# ---- helpers ------------------------------------------------------------------------------------


def parts_has(config: DistillConfig, part: str) -> bool:
    if part == "kd":
        return config.loss != "sft" and config.distil_ratio > 0
    return config.loss == "sft" or config.distil_ratio < 1


def _value(x: torch.Tensor | None) -> torch.Tensor:
    if x is None:
        return torch.zeros((), dtype=torch.float64)
    return x.detach().to("cpu", torch.float64)


def _loss_params(config: DistillConfig, t: float | None) -> dict[str, float]:
    params = dict(config.loss_params)
    if config.loss == "taid":
        params["t"] = t
    return params


def _ramp(step: int, total: int) -> float:
    """CTKD's cosine ramp of the gradient-reversal strength from 0 to 1."""
    return 0.5 * (1 - math.cos(math.pi * min(step / max(total, 1), 1.0)))


def _on_policy_this_step(config: DistillConfig, step: int) -> bool:
    """Decided by (seed, step) alone: identical on every rank and after a resume."""
    return random.Random(config.seed * 7_919 + step).random() < config.on_policy


def _training_records(config: DistillConfig) -> list:
    fmt = detect_format(config.data) if config.data_format == "auto" else config.data_format
    hf_options = {"split": config.data_split} if fmt == "hf" else {}
    # check_images="open": a corrupt image fails here, naming its record, before the output is touched
    return load_records(config.data, format=fmt, skip_bad=config.skip_bad, limit=config.data_limit,
                        check_images="open", **hf_options)


def _fit(record, student: ModelAdapter, teacher: ModelAdapter | None, max_length: int):
    def longest(r) -> int:
        lengths = [student.render([r]).input_ids.shape[1]]
        if teacher is not None:
            lengths.append(teacher.render([r]).input_ids.shape[1])
        return max(lengths)

    return fit_prompt(record, longest, max_length)


def _optimizer(model: torch.nn.Module, config: DistillConfig, ctkd: CTKDTemperature | None) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D) get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if ctkd is not None:
        groups.append({"params": list(ctkd.parameters()), "weight_decay": 0.0})
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


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_ranks_agree(env: Distributed, model: torch.nn.Module, schedule: TAIDSchedule | None, out: Path) -> None:
    """Every rank must end with the same weights and the same t; ``ranks.json`` records it.

    Drifting ranks are the silent failure of data-parallel distillation (the TAID reference
    kept t per GPU); a run that drifted stops here with an error instead of saving a student.
    """
    mine = {"rank": env.rank, "weights_sha256": _weights_digest(model), "t": schedule.t if schedule else None}
    everyone = [mine]
    if env.active:
        everyone = [None] * env.world_size
        dist.all_gather_object(everyone, mine)
    if env.is_main:
        (out / "ranks.json").write_text(json.dumps(everyone, indent=1))
    if len({(r["weights_sha256"], r["t"]) for r in everyone}) > 1:
        raise RuntimeError(f"ranks disagree at the end of the run (see {out / 'ranks.json'}): {everyone}")


def _save_student_atomically(student: ModelAdapter, target: Path) -> None:
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        student.save(tmp)
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
