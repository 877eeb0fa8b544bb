"""One config dataclass is the source of truth for a distillation run.

It is read from a YAML file, then command-line flags, then ``key=value`` overrides (later wins),
and the resolved result is written to ``OUTPUT/config.yaml``. Unknown keys are errors, never
silently ignored. Defaults follow the TAID paper: AdamW lr 1e-4, weight decay 0.01, cosine
decay, gradient clipping 1.0 (and TAID's own settings, declared in losses/schedule.py).

A loss's settings are not fields here: each loss class declares them (``losses.Setting``) and a
config holds them in the loss's *section*, named after the loss (a ``module:Class`` loss: the
class name in snake_case)::

    loss: taid
    taid: {t_start: 0.2, alpha_per_run: 4.0}     # YAML; the resolved config.yaml writes the whole section
    taid.t_start=0.2                             # a key=value override
    --taid.t-start 0.2                           # a flag (--no-taid.adaptive for a switch)

Aliases, the keys of configs written before settings nested, stay accepted: the flat keys a
setting declares (``t_start``, ``t_end``, ``taid_alpha``, ``taid_beta``, ``taid_adaptive``,
``taid_alpha_per_run``, ``ctkd_lambda_max``; flags ``--t-start`` ...) and ``loss_params`` for the
chosen loss's parameters (``loss_params: {beta: 0.3}``, ``loss_params.beta=0.3``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.table import VALIDATE_IMAGES
from ..errors import UserError
from ..files import write_text_atomically
from ..flags import add_typed_argument, flag
from ..losses import LOSSES, EngineOptions, Loss, UnknownLoss
from ..losses import loss_class as find_loss_class
from ..losses.triton_chunk import CHUNK_KERNELS
from ..models.lora import LoraSettings

RESPONSE_SOURCES = ("data", "teacher")
CROSS_TOKENIZER = ("off", "span", "uld")
MIXED_PRECISION = ("no", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")
LR_SCHEDULERS = ("cosine", "linear", "constant")
LIST_KEYS = ("lora_target_modules",)  # str keys that also take a YAML list (stored comma-separated)
GENERATION_BACKENDS = ("hf", "vllm")


@dataclass
class DistillConfig:
    # --- models -----------------------------------------------------------------------------
    student: str = ""  # a checkpoint dir / hub id, or a composed-VLM spec ("composed:small?...")
    teacher: str | None = None  # not needed for loss=sft
    student_dtype: str = "float32"
    teacher_dtype: str = "auto"  # "auto" keeps the checkpoint's dtype; bfloat16 halves its memory
    teacher_device: str | None = None  # e.g. "cpu" (offload) or "cuda:1"; default: the student's
    student_chat_template: str | None = None  # Jinja template overriding the processor's
    teacher_chat_template: str | None = None
    teacher_cache: str | None = None  # a `taid-vlm teacher-cache` directory: no live teacher is loaded

    # --- teachers and the sampler on vLLM servers (taid_vlm/teacher_server/, docs/TEACHER_SERVER.md) --
    teacher_server: str | None = None  # URL of `taid-vlm teacher-server --teacher TEACHER`: its top-k prompt log-probs
    teacher_server_timeout: float = 600.0  # seconds an unreachable server is waited for, then one error (resumable)
    teacher_top_k: int = 20  # log-probs per response token asked of a teacher server (<= its --top-k)
    teachers: dict[str, str] = field(default_factory=dict)  # record `teacher` tag -> checkpoint dir or server URL
    generation_backend: str = "hf"  # on-policy samples from the student's own generate ("hf") or a vLLM server ("vllm")
    generation_server: str | None = None  # with vllm: URL of `teacher-server --teacher STUDENT --allow-weight-updates`
    generation_sync_every: int = 1  # optimizer steps between loads of the student's weights into generation_server

    # --- data -------------------------------------------------------------------------------
    data: str = ""
    data_format: str = "auto"
    data_split: str = "train"  # for Hugging Face datasets (e.g. "train_sft" for UltraChat-200k)
    data_limit: int | None = None  # use only the first N records
    max_length: int | None = None  # tokens per rendered sequence; prompts are trimmed, never responses
    skip_bad: bool = False  # skip bad records (named in a warning) instead of stopping; also those met mid-run
    # What is checked before training (taid_vlm/data/table.py): "sample" stats every image file and
    # builds and decodes 256 records spread over the set (seconds on LLaVA-665k); "all" builds every
    # record and decodes every image (minutes on large sets); "none" checks only the JSON.
    validate_images: str = "sample"
    # Hugging Face datasets read as a stream (hub name, hf:NAME, parquet/arrow files, a saved folder):
    # nothing downloaded or decoded ahead; each epoch in a seeded shuffle-buffer order (train/data.py)
    streaming: bool = False
    responses: str = "data"  # "data": the data set's responses; "teacher": generated once by the teacher
    on_policy: float = 0.0  # probability that a batch's responses are replaced by student samples (GKD)
    generation_max_new_tokens: int = 64
    generation_temperature: float = 1.0  # for on-policy student samples

    # --- loss -------------------------------------------------------------------------------
    loss: str = "taid"  # a registered name (taid_vlm/losses/zoo.py) or "module:Class" (a Loss subclass)
    distil_ratio: float = 1.0  # weight of the distillation loss; 1 - ratio goes to cross entropy
    temperature: float = 1.0
    # the loss settings given, per loss section ({taid: {t_start: 0.2}}; YAML writes each section as a
    # top-level key); defaults and ranges come from the loss class, and validate() resolves the chosen one
    loss_settings: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=flag(cli=False))
    chunked: bool = True  # the chunked fused-linear engine; False = plain full logits (for comparison)
    chunk_size: int | None = None  # tokens per chunk; overrides chunk_memory_mb
    chunk_memory_mb: float | None = None  # budget for a chunk's [chunk, V] buffers (None: device default)
    chunk_compile: bool = False  # torch.compile the taid/fkl chunk kernel (pays a one-off compile)
    chunk_kernel: str = "torch"  # taid/fkl chunk kernel: torch, triton (CUDA) or auto (triton on CUDA, else torch); torch until measured on a GPU

    # --- cross-tokenizer distillation (docs/CROSS-TOKENIZER.md) -----------------------------
    # off: one tokenizer (a padded vocabulary over a shared range included); span: the teacher's
    # top-k mapped onto the student's vocabulary, any loss; uld: sorted probabilities (loss=uld)
    cross_tokenizer: str = field(default="off", metadata=flag(choices=CROSS_TOKENIZER, help=(
        "distil across tokenizers: span (any loss, taid included) or uld (loss=uld); off: one tokenizer")))
    cross_tokenizer_top_k: int = 64  # teacher entries per aligned token, below the student's vocabulary (a cache: its own)

    # --- optimisation -----------------------------------------------------------------------
    lr: float = 1e-4
    weight_decay: float = 0.01
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    batch_size: int = 8  # records per micro-batch per process
    grad_accum: int = 1
    max_steps: int = 1000
    freeze_vision: bool = False

    # --- scale (train/precision.py, train/parallel.py, train/data.py) -----------------------
    mixed_precision: str = "no"  # "bf16" / "fp16": autocast over fp32 master weights and optimizer state
    gradient_checkpointing: bool = False  # recompute activations in backward (LM and vision encoder)
    distributed: str = "ddp"  # with several processes: "ddp" replicates the student, "fsdp" shards it (FSDP2)
    teacher_shard: bool = False  # with distributed=fsdp: shard the teacher's layers too (inference only)
    num_workers: int = 0  # DataLoader workers rendering records for student and teacher off the step
    save_dtype: str | None = None  # dtype of the saved student (e.g. bfloat16); default: the training dtype

    # --- no compute on padding (train/grouping.py, models/packing.py) ------------------------
    group_by_length: bool = field(default=True, metadata=flag(
        help="each step takes records of similar length, regrouped within shuffled windows (the same records an epoch)"))
    group_window: int = field(default=64, metadata=flag(
        help="optimizer steps per window that group_by_length regroups"))
    packing: bool = field(default=False, metadata=flag(
        help="lay a micro-batch's records end to end in padding-free rows; attention never crosses records"))
    attn_implementation: str | None = field(default=None, metadata=flag(
        help="attention of both models, e.g. flash_attention_2 (GPU: varlen packed rows), sdpa, eager; default: the model's"))

    # --- LoRA student (taid_vlm/models/lora.py, through peft): lora_r > 0 trains adapters only ---
    lora_r: int = field(default=0, metadata=flag(help="LoRA adapter rank; 0 (default) trains the whole student"))
    lora_alpha: float | None = field(default=None, metadata=flag(
        help="LoRA scale = lora_alpha / lora_r (default: lora_r, scale 1)"))
    lora_dropout: float = field(default=0.0, metadata=flag(
        help="dropout on each adapted layer's input (refused on the LM head with the chunked loss)"))
    lora_target_modules: str = field(default="all-linear", metadata=flag(
        help="all-linear (every linear layer but the head) or module names, e.g. q_proj,k_proj,v_proj,o_proj,lm_head"))
    save_adapter_only: bool = field(default=False, metadata=flag(
        help="student/ holds peft's adapter folder instead of the merged student"))

    # --- run --------------------------------------------------------------------------------
    output: str = ""
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: str | None = field(default=None, metadata=flag(  # "auto" (latest checkpoint in output) or a checkpoint dir
        nargs="?", const="auto", help="continue the run in --output (latest checkpoint), or from a checkpoint dir"))
    overwrite: bool = False
    max_bad_steps: int = 3
    tensorboard: bool = False
    progress: bool = True
    resume_accept_changes: bool = False  # resume although teacher/student/data/loss differ from the checkpoint's
    allow_self_distill: bool = False  # teacher and student may be the same model (a zero loss otherwise refused)

    def validate(self) -> "DistillConfig":
        problems = []
        if not self.student:
            problems.append("student is required (a checkpoint dir, hub id or composed spec)")
        if not self.data:
            problems.append("data is required (a data file, folder or dataset)")
        if not self.output:
            problems.append("output is required (the run directory)")
        try:
            find_loss_class(self.loss)
        except UnknownLoss as e:
            problems.append(str(e))
        problems += self._served_problems()
        if self.needs_teacher and not (self.teacher or self.teacher_cache or self.teacher_server or self.teachers):
            problems.append(f"loss {self.loss!r} with distil_ratio {self.distil_ratio} needs a teacher (or a teacher_cache)")
        if self.teacher_cache and self.on_policy > 0:
            problems.append("on_policy > 0 needs a live teacher to score the student's samples; drop teacher_cache or set on_policy=0")
        if self.responses not in RESPONSE_SOURCES:
            problems.append(f"responses must be one of {RESPONSE_SOURCES}, got {self.responses!r}")
        if self.responses == "teacher" and not (self.teacher or self.teacher_cache or self.teacher_server):
            problems.append("responses=teacher needs a teacher")
        if not 0.0 <= self.on_policy <= 1.0:
            problems.append(f"on_policy is a probability in [0, 1], got {self.on_policy}")
        if not 0.0 <= self.distil_ratio <= 1.0:
            problems.append(f"distil_ratio must lie in [0, 1], got {self.distil_ratio}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        problems += self._scale_problems()
        problems += self._cross_tokenizer_problems()
        for name in ("batch_size", "grad_accum", "max_steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.chunk_memory_mb is not None and not self.chunk_memory_mb > 0:
            problems.append(f"chunk_memory_mb must be positive (MiB), got {self.chunk_memory_mb}")
        if self.resume and self.overwrite:
            problems.append("resume and overwrite exclude each other: --resume continues the run in output, "
                            "--overwrite replaces it; pass one")
        problems += value_problems(self)
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return self

    def _cross_tokenizer_problems(self) -> list[str]:
        mode, cls = self.cross_tokenizer, self.loss_class
        if mode not in CROSS_TOKENIZER:
            return [f"cross_tokenizer must be one of {CROSS_TOKENIZER}, got {mode!r}"]
        problems = []
        if self.cross_tokenizer_top_k < 1:
            problems.append(f"cross_tokenizer_top_k must be >= 1, got {self.cross_tokenizer_top_k}")
        if mode != "off" and (self.teacher_server or self.teachers):
            problems.append(f"cross_tokenizer={mode} aligns a live teacher or a teacher cache with the student; a "
                            "teacher_server or several teachers are not supported with it yet")
        if cls is None:
            return problems
        if mode != "off" and not cls.uses_kd(self.distil_ratio):
            problems.append(f"cross_tokenizer={mode} aligns a teacher with the student, but loss={self.loss} with "
                            f"distil_ratio={self.distil_ratio} uses none: drop cross_tokenizer")
        elif mode == "uld" and not cls.ranked:
            why = f" ({cls.on_sorted})" if cls.on_sorted else ""
            problems.append(f"cross_tokenizer=uld compares the two models' sorted probabilities, so the distillation term "
                            f"is ULD itself: set loss=uld, or cross_tokenizer=span to distil with loss={self.loss}{why}")
        elif cls.ranked and mode != "uld":
            problems.append(f"loss={self.loss} compares sorted probabilities of aligned tokens: set cross_tokenizer=uld "
                            "(it also serves a pair that shares a tokenizer)")
        elif mode == "uld" and self.distil_ratio >= 1:
            problems.append("cross_tokenizer=uld trains ULD beside the student's cross entropy (CE + lambda * ULD, "
                            "Boizard et al. 2024): set distil_ratio below 1, e.g. 0.5 (lambda = ratio / (1 - ratio) = 1)")
        return problems

    def _served_problems(self) -> list[str]:
        problems = []
        if self.teacher_server and self.teacher_cache:
            problems.append("teacher_server and teacher_cache are two sources of the teacher's signal; pass one")
        if self.teachers and (self.teacher or self.teacher_cache or self.teacher_server):
            problems.append("teachers routes every record to its tagged teacher; drop teacher, teacher_cache and "
                            "teacher_server (or drop teachers)")
        if self.teachers and self.responses == "teacher":
            problems.append("responses=teacher with several teachers is not supported; use responses=data")
        if any(not str(v).strip() for v in self.teachers.values()):
            problems.append("teachers: every tag needs a checkpoint folder or a server URL")
        if self.generation_backend not in GENERATION_BACKENDS:
            problems.append(f"generation_backend must be one of {GENERATION_BACKENDS}, got {self.generation_backend!r}")
        if self.generation_backend == "vllm" and not self.generation_server:
            problems.append("generation_backend=vllm samples from a vLLM server of the student: start `taid-vlm "
                            "teacher-server --teacher STUDENT --allow-weight-updates` and set generation_server=URL")
        if self.generation_backend == "vllm" and self.on_policy == 0:
            problems.append("generation_backend=vllm samples on-policy responses: set on_policy > 0")
        if self.teacher_server_timeout < 0:
            problems.append(f"teacher_server_timeout must be >= 0 seconds, got {self.teacher_server_timeout}")
        for name in ("teacher_top_k", "generation_sync_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        return problems

    def _scale_problems(self) -> list[str]:
        problems = []
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        elif self.mixed_precision != "no" and self.student_dtype not in ("float32", "fp32", "float") and not self.lora_r:
            problems.append(f"mixed_precision={self.mixed_precision} keeps fp32 master weights: set student_dtype=float32 "
                            f"(got {self.student_dtype}), or mixed_precision=no to train in {self.student_dtype} alone")
        if self.distributed not in DISTRIBUTED:
            problems.append(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        if self.validate_images not in VALIDATE_IMAGES:
            problems.append(f"validate_images must be one of {VALIDATE_IMAGES}, got {self.validate_images!r}")
        if self.streaming:
            unsupported = [(self.num_workers > 0, "num_workers=0 (a stream is rendered in the main process)"),
                           (self.responses == "teacher", "responses=data"), (bool(self.teacher_cache), "no teacher_cache"),
                           (self.data_limit is not None, "no data_limit")]
            problems += [f"streaming=true needs {need}" for bad, need in unsupported if bad]
        if self.distributed == "fsdp" and self.on_policy > 0:
            problems.append("on_policy sampling needs the whole student on every rank: use distributed=ddp")
        if self.distributed == "fsdp" and self.mixed_precision == "fp16":
            problems.append("mixed_precision=fp16 (a loss scaler over sharded gradients) is not supported with "
                            "distributed=fsdp: use mixed_precision=bf16")
        if self.distributed == "fsdp" and not self.chunked:
            problems.append("distributed=fsdp reads the LM head in the chunked loss: keep chunked=true")
        if self.distributed == "fsdp" and self.loss_class is not None and self.loss_class.owns_parameters():
            problems.append(f"loss={self.loss}'s own trainable parameters (e.g. CTKD's temperature) live outside the "
                            "sharded student: use distributed=ddp")
        if self.teacher_shard and self.distributed != "fsdp":
            problems.append("teacher_shard=true shards the teacher with FSDP: set distributed=fsdp")
        if self.group_window < 1:
            problems.append(f"group_window must be >= 1 (optimizer steps per length-grouping window), got {self.group_window}")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {self.num_workers}")
        if self.save_dtype is not None and self.save_dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"save_dtype must be float32, bfloat16 or float16, got {self.save_dtype!r}")
        if self.lora_r:
            problems += self.lora_settings().problems()
        if self.save_adapter_only and not self.lora_r:
            problems.append("save_adapter_only=true keeps a LoRA adapter: set lora_r > 0 (or save_adapter_only=false)")
        if self.lora_r and self.generation_backend == "vllm":
            problems.append("generation_backend=vllm syncs whole checkpoints of the student to the server, not LoRA "
                            "adapters: use generation_backend=hf with lora_r > 0")
        return problems

    def lora_settings(self) -> LoraSettings | None:
        """The LoRA student's settings; None for full fine-tuning (lora_r = 0)."""
        if not self.lora_r:
            return None
        return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_target_modules)

    @property
    def loss_class(self) -> type[Loss] | None:
        """The class ``loss`` names; None when it names none (``validate`` reports that)."""
        try:
            return find_loss_class(self.loss)
        except UnknownLoss:
            return None

    @property
    def needs_teacher(self) -> bool:
        return self.loss_class is not None and self.loss_class.uses_kd(self.distil_ratio)

    def make_loss(self) -> Loss:
        """The run's loss object, built from the settings its class declares."""
        return find_loss_class(self.loss).from_settings(self.settings_of(), temperature=self.temperature,
                                                        total_steps=self.max_steps)

    def settings_of(self, loss: str | None = None) -> dict[str, Any]:
        """The resolved settings of ``loss`` (default: the run's): its defaults, updated with those given."""
        cls = find_loss_class(loss or self.loss)
        return {**cls.defaults(), **self.loss_settings.get(cls.section(), {})}

    def engine_options(self) -> EngineOptions:
        """How the loss engine computes this run's loss (the same on every path and device)."""
        return EngineOptions(chunked=self.chunked, chunk_size=self.chunk_size, chunk_memory_mb=self.chunk_memory_mb,
                             compile=self.chunk_compile, chunk_kernel=self.chunk_kernel)

    def to_dict(self) -> dict[str, Any]:
        """The YAML recipe of this config: fields, with the loss settings as one section per loss."""
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if key != "loss_settings":
                out[key] = value
                continue
            chosen = self.loss_class
            sections = dict(value)
            if chosen is not None and chosen.declared():
                sections[chosen.section()] = self.settings_of()
            out.update({section: dict(values) for section, values in sections.items() if values})
        return out

    def save(self, path: str | Path) -> None:
        write_text_atomically(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


class ConfigError(UserError):
    """A config key or value that cannot run; the message names the key and its valid range."""


FIELDS = {f.name: f for f in dataclasses.fields(DistillConfig)}


def field_type(name: str) -> Any:
    return typing.get_type_hints(DistillConfig)[name]


def _scalar(text: str) -> Any:
    """A flag or YAML string as a value; '2e-5' is a number too (YAML 1.1 wants '2.0e-5')."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def coerce(name: str, value: Any, source: str) -> Any:
    """Check (and convert strings of) a value against the field's declared type."""
    kind = field_type(name)
    return _convert(_without_none(kind), _is_optional(kind), value, name, source)


def _convert(base: Any, optional: bool, value: Any, name: str, source: str) -> Any:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"{source}: {name} cannot be empty")
    if isinstance(value, str) and base is not str:
        value = _scalar(value)
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if name in LIST_KEYS and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)  # a YAML list of names
        return str(value)
    elif typing.get_origin(base) is dict and typing.get_args(base)[1] is str:
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return {str(k): v for k, v in value.items()}
    elif typing.get_origin(base) is dict:
        if isinstance(value, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            return {str(k): float(v) for k, v in value.items()}
    raise ConfigError(f"{source}: {name} expects {_type_name(base)}, got {value!r}")


# ---- value ranges ---------------------------------------------------------------------------------

DTYPES = ("float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half")  # models.loading._DTYPES
DATA_FORMATS = ("auto", "llava", "chat", "vqa", "caption", "coco", "hf")  # data.loaders.FORMATS
_DEVICE = re.compile(r"^(cpu|auto|mps|meta|(cuda|xpu|npu)(:\d+)?)$")


def value_problems(config: "DistillConfig") -> list[str]:
    """Every out-of-range value, each with its valid range: nothing is clamped behind the user's back."""
    problems = []

    def check(name: str, ok: bool, expected: str) -> None:
        if not ok:
            problems.append(f"{name} must be {expected}, got {getattr(config, name)}")

    finite = {f: getattr(config, f) for f in FIELDS if isinstance(getattr(config, f), float)}
    for name, value in finite.items():
        if not math.isfinite(value):
            problems.append(f"{name} must be a finite number, got {value}")
    if problems:
        return problems
    check("lr", config.lr > 0, "> 0 (e.g. 1e-4)")
    check("weight_decay", config.weight_decay >= 0, ">= 0")
    check("grad_clip", config.grad_clip >= 0, ">= 0 (0 turns clipping off)")
    check("temperature", config.temperature > 0, "> 0 (1.0 = no scaling)")
    check("warmup_steps", config.warmup_steps >= 0, ">= 0")
    check("chunk_size", config.chunk_size is None or config.chunk_size >= 1, ">= 1 or null (automatic)")
    check("chunk_kernel", config.chunk_kernel in CHUNK_KERNELS, f"one of {', '.join(CHUNK_KERNELS)}")
    check("max_length", config.max_length is None or config.max_length >= 8, ">= 8 tokens or null (no limit)")
    check("data_limit", config.data_limit is None or config.data_limit >= 1, ">= 1 or null (all records)")
    check("generation_max_new_tokens", config.generation_max_new_tokens >= 1, ">= 1")
    check("generation_temperature", config.generation_temperature > 0, "> 0")
    check("keep_checkpoints", config.keep_checkpoints >= 0, ">= 0 (0 keeps all)")
    check("max_bad_steps", config.max_bad_steps >= 0, ">= 0")
    check("student_dtype", config.student_dtype.lower() in DTYPES, f"one of {', '.join(DTYPES)}")
    check("teacher_dtype", config.teacher_dtype.lower() in DTYPES + ("auto",), f"auto or one of {', '.join(DTYPES)}")
    check("teacher_device", config.teacher_device is None or bool(_DEVICE.match(config.teacher_device)),
          "cpu, cuda, cuda:N, mps or auto")
    check("data_format", config.data_format in DATA_FORMATS, f"one of {', '.join(DATA_FORMATS)}")
    problems += _loss_problems(config)
    return problems


def _loss_problems(config: "DistillConfig") -> list[str]:
    """The loss classes' own checks on the settings given (every section; the chosen loss's resolved
    in place, so that config.yaml shows them all)."""
    chosen = config.loss_class
    sections = loss_sections(chosen)
    problems: list[str] = []
    if chosen is not None and chosen.declared():
        if chosen.section() in FIELDS:
            return [f"loss {chosen.label()!r}: its settings section {chosen.section()!r} is a config key too; "
                    "give the class another name"]
        config.loss_settings[chosen.section()] = config.settings_of()
    spelling = getattr(config, "_spelling", {})
    for section, values in config.loss_settings.items():
        cls = sections.get(section)
        if cls is None:
            problems.append(f"{section} is not the settings section of a loss (sections: {', '.join(sections)})")
            continue
        given = spelling.get(section, {})
        try:
            values = {key: _setting_value(cls, key, value, given.get(key, f"{section}.{key}"), "loss_settings")
                      for key, value in values.items()}
        except ConfigError as e:
            problems.append(str(e).split(": ", 1)[1])
            continue
        resolved = {**cls.defaults(), **values}
        problems += [p for p in cls.setting_problems(resolved, given) if p not in problems]
    return problems


def loss_sections(chosen: type[Loss] | None = None) -> dict[str, type[Loss]]:
    """Settings sections a config may hold: every registered loss's, and the chosen loss's."""
    classes = [*LOSSES.values(), *([chosen] if chosen is not None else [])]
    return {cls.section(): cls for cls in dict.fromkeys(classes)}


def loss_aliases(chosen: type[Loss] | None = None) -> dict[str, tuple[type[Loss], str]]:
    """Flat keys of older configs -> (loss class, setting): ``t_start`` -> (TAID, "t_start")."""
    return {setting.alias: (cls, key) for cls in loss_sections(chosen).values()
            for key, setting in cls.declared().items() if setting.alias}


def _setting_value(cls: type[Loss], key: str, value: Any, spelled: str, source: str) -> Any:
    """``value`` of setting ``key`` of ``cls`` checked against (and converted to) its declared type."""
    declared = cls.declared()
    if key not in declared:
        if key in cls.scheduled:
            raise ConfigError(f"{source}: {spelled} is not a setting of loss {cls.label()!r} ({cls.scheduled[key]})")
        takes = ", ".join(declared) or "no settings"
        raise ConfigError(f"{source}: unknown key {spelled!r}: loss {cls.label()!r} takes {takes}")
    setting = declared[key]
    optional = setting.default is None and not setting.required
    return _convert(setting.type, optional, value, spelled, source)


def resume_settings(values: dict[str, Any], cls: type[Loss]) -> dict[str, Any]:
    """The settings of loss ``cls`` that a config dict (a saved config.yaml, of any version) resolves
    to, as ``section.key``: what a resumed run must share with its checkpoint."""
    resolved = cls.defaults()
    for key, setting in cls.declared().items():
        if setting.alias and setting.alias in values:
            resolved[key] = values[setting.alias]
    resolved.update({k: v for k, v in (values.get("loss_params") or {}).items() if k in resolved})
    section = values.get(cls.section())
    resolved.update({k: v for k, v in (section if isinstance(section, dict) else {}).items() if k in resolved})
    return {f"{cls.section()}.{k}": float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in resolved.items()}


def _is_optional(kind: Any) -> bool:
    return type(None) in typing.get_args(kind)


def _without_none(kind: Any) -> Any:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0]
    return kind


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def apply(config: DistillConfig, values: dict[str, Any], source: str, chosen: type[Loss] | None = None) -> DistillConfig:
    """Set ``values`` on ``config``: fields, loss settings (``taid: {...}``, ``taid.t_start``) and
    their aliases (``t_start``, ``loss_params.beta``). ``chosen``: the run's loss class, whose
    section and parameters the keys may name (default: the class ``config.loss`` names now)."""
    chosen = chosen or config.loss_class
    sections, aliases = loss_sections(chosen), loss_aliases(chosen)
    for key, value in values.items():
        head, dot, rest = key.partition(".")
        if key == "loss_params" or head == "loss_params" and dot:
            params = {rest: value} if dot else value
            if not isinstance(params, dict) or any(isinstance(v, bool) or not isinstance(_number(v), (int, float))
                                                   for v in params.values()):
                what = f"{key} expects a number" if dot else f"{key} expects dict"
                raise ConfigError(f"{source}: {what}, got {value!r}")
            for name, number in params.items():
                _set_param(config, chosen, str(name), _number(number), f"loss_params.{name}", source)
        elif key in aliases:
            cls, name = aliases[key]
            _set_setting(config, cls, name, value, key, source)
        elif key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} holds the settings of loss {sections[key].label()!r} as a mapping "
                                  f"({key}: {{name: value}}), got {value!r}")
            for name, item in value.items():
                _set_setting(config, sections[key], str(name), item, f"{key}.{name}", source)
        elif dot and head in sections:
            _set_setting(config, sections[head], rest, value, key, source)
        elif head == "teachers" and dot:  # teachers.TAG=DIR-or-URL sets one route
            config.teachers[rest] = str(value)
        elif key in FIELDS and key != "loss_settings":
            setattr(config, key, coerce(key, value, source))
        else:
            known = [*(f for f in FIELDS if f != "loss_settings"), *sections, *aliases]
            close = [k for k in known if key.replace("-", "_") == k or key in k]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}; known keys: {', '.join(known)}")
    return config


def _number(value: Any) -> Any:
    return _scalar(value) if isinstance(value, str) else value


def _set_param(config: DistillConfig, cls: type[Loss] | None, name: str, value: float, spelled: str, source: str) -> None:
    """``loss_params.<name>``: a parameter of the chosen loss's math (not one it schedules itself)."""
    accepted = [k for k in (cls.params if cls is not None else {}) if k not in cls.scheduled]
    if cls is None or name not in accepted:
        label = cls.label() if cls is not None else config.loss
        takes = ", ".join(accepted) if accepted else "no parameters"
        extra = f" ({cls.scheduled[name]})" if cls is not None and name in cls.scheduled else ""
        raise ConfigError(f"{source}: {spelled} is not a parameter of loss {label!r}; it takes {takes}{extra}")
    _set_setting(config, cls, name, float(value), spelled, source)


def _set_setting(config: DistillConfig, cls: type[Loss], name: str, value: Any, spelled: str, source: str) -> None:
    section = cls.section()
    config.loss_settings.setdefault(section, {})[name] = _setting_value(cls, name, value, spelled, source)
    config.__dict__.setdefault("_spelling", {}).setdefault(section, {})[name] = spelled  # for messages only


def chosen_loss(layers: list[dict[str, Any]]) -> str:
    """The loss the last layer that names one chooses (the default otherwise)."""
    spec = DistillConfig.loss
    for values in layers:
        if values.get("loss") is not None:
            spec = values["loss"]
    return spec


def load_config(
    yaml_path: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> DistillConfig:
    """YAML file, then flags, then ``key=value`` overrides; returns a validated config."""
    layers: list[tuple[dict[str, Any], str]] = []
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not valid YAML: not UTF-8 text (byte {e.start}); is it the right file?") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
        layers.append((values, str(path)))
    if flags:
        layers.append(({k: v for k, v in flags.items() if v is not None}, "command line"))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        layers.append(({key.strip(): value}, f"override {item!r}"))
    # The loss first: which settings sections and parameters the keys may name depends on it.
    spec = chosen_loss([values for values, _ in layers])
    try:
        chosen = find_loss_class(spec) if isinstance(spec, str) else None
    except UnknownLoss as e:
        raise ConfigError(f"invalid configuration: {e}") from None
    config = DistillConfig()
    for values, source in layers:
        apply(config, values, source, chosen)
    return config.validate()


# ---- the loss settings' flags ---------------------------------------------------------------------------


def add_loss_setting_arguments(parser: Any, loss: str | None = None) -> tuple[str, ...]:
    """A flag per setting of every registered loss (and of ``loss``, e.g. a ``module:Class`` the
    command line names): ``--<section>.<setting>`` with dashes (``--taid.t-start``,
    ``--scaled-forward-kl.scale``), a switch also as ``--no-<section>.<setting>``, plus each
    declared alias (``--t-start``). Returns the flags' dests (``taid.t_start``, ``t_start``)."""
    chosen = None
    if loss:
        try:
            chosen = find_loss_class(loss)
        except UnknownLoss:
            pass  # load_config reports it, in one line
    group = parser.add_argument_group(
        "loss settings", "each loss's own settings, as --<loss>.<setting> (YAML: <loss>: {<setting>: value}; "
        "override: <loss>.<setting>=value); a module:Class loss's section is the class name in snake_case")
    dests = []
    for section, cls in loss_sections(chosen).items():
        for key, setting in cls.declared().items():
            dest = f"{section}.{key}"
            names = (f"--{section.replace('_', '-')}.{key.replace('_', '-')}",)
            described = f"{setting.help} " if setting.help else ""
            add_typed_argument(group, names, dest, setting.type, layered=True,
                               help=f"{described}(loss {cls.label()}; default {setting.default})")
            dests.append(dest)
            if setting.alias:
                add_typed_argument(group, (f"--{setting.alias.replace('_', '-')}",), setting.alias, setting.type,
                                   layered=True, help=f"alias of {names[0]}")
                dests.append(setting.alias)
    parser.set_defaults(loss_setting_flags=tuple(dests))
    return tuple(dests)


def loss_setting_values(args: Any) -> dict[str, Any]:
    """The loss-setting flags given on the command line (``add_loss_setting_arguments``'s dests)."""
    return {dest: getattr(args, dest) for dest in getattr(args, "loss_setting_flags", ()) if getattr(args, dest, None) is not None}


def loss_in_command_line(argv: list[str]) -> str | None:
    """The loss a ``distill`` command line chooses (``loss=`` overrides over ``--loss`` over the
    ``--config`` recipe's ``loss:``), read before parsing so that its settings get their flags."""
    found: dict[str, str] = {}
    for i, word in enumerate(argv):
        for name in ("--config", "--loss"):
            if word == name and i + 1 < len(argv):
                found[name] = argv[i + 1]
            elif word.startswith(name + "="):
                found[name] = word.split("=", 1)[1]
        if word.startswith("loss="):
            found["loss="] = word.split("=", 1)[1]
    recipe_loss = None
    if "--config" in found:
        try:
            recipe = yaml.safe_load(Path(found["--config"]).read_text(encoding="utf-8"))
            recipe_loss = recipe.get("loss") if isinstance(recipe, dict) else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            pass  # load_config reports a broken recipe
    spec = found.get("loss=") or found.get("--loss") or recipe_loss
    return spec if isinstance(spec, str) else None
