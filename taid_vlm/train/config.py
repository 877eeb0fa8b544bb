"""One config dataclass is the source of truth for a distillation run.

It is read from a YAML file, then command-line flags, then ``key=value`` overrides (later wins),
and the resolved result is written to ``OUTPUT/config.yaml``. Unknown keys are errors, never
silently ignored. Defaults follow the TAID paper: AdamW lr 1e-4, weight decay 0.01, cosine
decay, gradient clipping 1.0, t_start 0.4, t_end 1.0, alpha 5e-4, beta 0.99.
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

from ..errors import UserError
from ..files import write_text_atomically
from ..flags import flag
from ..losses import LOSSES, EngineOptions, Loss, UnknownLoss
from ..losses import loss_class as find_loss_class

RESPONSE_SOURCES = ("data", "teacher")
CROSS_TOKENIZER = ("off", "span", "uld")
MIXED_PRECISION = ("no", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")
LR_SCHEDULERS = ("cosine", "linear", "constant")


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

    # --- data -------------------------------------------------------------------------------
    data: str = ""
    data_format: str = "auto"
    data_split: str = "train"  # for Hugging Face datasets (e.g. "train_sft" for UltraChat-200k)
    data_limit: int | None = None  # use only the first N records
    max_length: int | None = None  # tokens per rendered sequence; prompts are trimmed, never responses
    skip_bad: bool = False
    responses: str = "data"  # "data": the data set's responses; "teacher": generated once by the teacher
    on_policy: float = 0.0  # probability that a batch's responses are replaced by student samples (GKD)
    generation_max_new_tokens: int = 64
    generation_temperature: float = 1.0  # for on-policy student samples

    # --- loss -------------------------------------------------------------------------------
    loss: str = "taid"  # a registered name (taid_vlm/losses/zoo.py) or "module:Class" (a Loss subclass)
    distil_ratio: float = 1.0  # weight of the distillation loss; 1 - ratio goes to cross entropy
    temperature: float = 1.0
    loss_params: dict[str, float] = field(default_factory=dict)  # e.g. {beta: 0.5} for gjsd
    chunked: bool = True  # the chunked fused-linear engine; False = plain full logits (for comparison)
    chunk_size: int | None = None  # tokens per chunk; overrides chunk_memory_mb
    chunk_memory_mb: float | None = None  # budget for a chunk's [chunk, V] buffers (None: device default)
    chunk_compile: bool = False  # torch.compile the taid/fkl chunk kernel (pays a one-off compile)
    # Settings of one loss; each loss class declares the ones it reads and their ranges.
    # TAID schedule (docs/TAID.md)
    t_start: float = 0.4
    t_end: float = 1.0
    taid_alpha: float = 5e-4
    taid_beta: float = 0.99
    taid_adaptive: bool = True
    taid_alpha_per_run: float | None = None  # alpha = this / max_steps: adapts in short runs too
    # CTKD: the learned temperature's gradient-reversal strength ramps 0 -> this over the run
    ctkd_lambda_max: float = 1.0

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
        if self.needs_teacher and not (self.teacher or self.teacher_cache):
            problems.append(f"loss {self.loss!r} with distil_ratio {self.distil_ratio} needs a teacher (or a teacher_cache)")
        if self.teacher_cache and self.on_policy > 0:
            problems.append("on_policy > 0 needs a live teacher to score the student's samples; drop teacher_cache or set on_policy=0")
        if self.responses not in RESPONSE_SOURCES:
            problems.append(f"responses must be one of {RESPONSE_SOURCES}, got {self.responses!r}")
        if self.responses == "teacher" and not (self.teacher or self.teacher_cache):
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
        if cls is None:
            return problems
        if mode != "off" and not cls.uses_kd(self.distil_ratio):
            problems.append(f"cross_tokenizer={mode} aligns a teacher with the student, but loss={self.loss} with "
                            f"distil_ratio={self.distil_ratio} uses none: drop cross_tokenizer")
        elif mode == "uld" and not cls.ranked:
            why = (" (TAID's interpolation of two sorted vectors is their displacement interpolant, whose distance to "
                   "the student is exactly t * ULD: it would only rescale the loss)") if "t" in cls.params else ""
            problems.append(f"cross_tokenizer=uld compares the two models' sorted probabilities, so the distillation term "
                            f"is ULD itself: set loss=uld, or cross_tokenizer=span to distil with loss={self.loss}{why}")
        elif cls.ranked and mode != "uld":
            problems.append(f"loss={self.loss} compares sorted probabilities of aligned tokens: set cross_tokenizer=uld "
                            "(it also serves a pair that shares a tokenizer)")
        elif mode == "uld" and self.distil_ratio >= 1:
            problems.append("cross_tokenizer=uld trains ULD beside the student's cross entropy (CE + lambda * ULD, "
                            "Boizard et al. 2024): set distil_ratio below 1, e.g. 0.5 (lambda = ratio / (1 - ratio) = 1)")
        return problems

    def _scale_problems(self) -> list[str]:
        problems = []
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        elif self.mixed_precision != "no" and self.student_dtype not in ("float32", "fp32", "float"):
            problems.append(f"mixed_precision={self.mixed_precision} keeps fp32 master weights: set student_dtype=float32 "
                            f"(got {self.student_dtype}), or mixed_precision=no to train in {self.student_dtype} alone")
        if self.distributed not in DISTRIBUTED:
            problems.append(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
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
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {self.num_workers}")
        if self.save_dtype is not None and self.save_dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"save_dtype must be float32, bfloat16 or float16, got {self.save_dtype!r}")
        return problems

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
        cls = find_loss_class(self.loss)
        settings = {"temperature": self.temperature, **{key: getattr(self, key) for key in cls.settings}}
        return cls.from_settings(settings, dict(self.loss_params), self.max_steps)

    def engine_options(self) -> EngineOptions:
        """How the loss engine computes this run's loss (the same on every path and device)."""
        return EngineOptions(chunked=self.chunked, chunk_size=self.chunk_size, chunk_memory_mb=self.chunk_memory_mb,
                             compile=self.chunk_compile)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
    optional = _is_optional(kind)
    base = _without_none(kind)
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
        return str(value)
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
    """The loss classes' own checks: every registered loss's settings (they are config keys a user
    may set whatever the loss) and the chosen loss's loss_params."""
    chosen = config.loss_class
    classes = list(dict.fromkeys([*LOSSES.values(), *([chosen] if chosen is not None else [])]))
    problems: list[str] = []
    for cls in classes:
        unknown = [key for key in cls.settings if key not in FIELDS]
        if unknown:
            problems.append(f"loss {cls.label()!r} reads setting(s) {unknown} that are not config keys; give it "
                            "numbers through loss_params instead")
            continue
        for problem in cls.setting_problems({key: getattr(config, key) for key in cls.settings}):
            if problem not in problems:
                problems.append(problem)
    if chosen is not None:
        problems += chosen.param_problems(config.loss_params)
    return problems


def _is_optional(kind: Any) -> bool:
    return type(None) in typing.get_args(kind)


def _without_none(kind: Any) -> Any:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0]
    return kind


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def apply(config: DistillConfig, values: dict[str, Any], source: str) -> DistillConfig:
    """Set ``values`` on ``config``; ``loss_params.beta`` style keys set one loss parameter."""
    for key, value in values.items():
        if key.startswith("loss_params."):
            number = _scalar(value) if isinstance(value, str) else value
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ConfigError(f"{source}: {key} expects a number, got {value!r}")
            config.loss_params[key.split(".", 1)[1]] = float(number)
            continue
        if key not in FIELDS:
            close = [f for f in FIELDS if key.replace("-", "_") == f or key in f]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}; known keys: {', '.join(FIELDS)}")
        setattr(config, key, coerce(key, value, source))
    return config


def load_config(
    yaml_path: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> DistillConfig:
    """YAML file, then flags, then ``key=value`` overrides; returns a validated config."""
    config = DistillConfig()
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
        apply(config, values, str(path))
    if flags:
        apply(config, {k: v for k, v in flags.items() if v is not None}, "command line")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        apply(config, {key.strip(): value}, f"override {item!r}")
    return config.validate()
