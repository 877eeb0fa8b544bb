"""Load teacher and student behind one adapter, and check that the two can be distilled.

``load`` accepts a checkpoint directory or hub id (``from_pretrained``; offline runs need a local
copy) or a composed-VLM spec (``"composed:tiny"`` or a dict), which goes to
``taid_vlm.models.composed.build_from_spec``. Two checks guard a distillation pair:
``check_vocab_compatible`` once at load (the shared id range maps the same strings) and
``check_alignment`` per batch (both models return the very same response tokens).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.records import Record
from ..errors import UserError
from .adapter import ROLES, ModelAdapter
from .families import detect_family
from .lora import adapter_base, merge_adapter_folder
from .outputs import ResponseOutputs
from .tokenizer import CHATML_TEMPLATE, PLAIN_TEMPLATE

NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE, "plain": PLAIN_TEMPLATE}
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


def load(
    path_or_spec: str | Path | dict[str, Any],
    role: str = "student",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    tokenizer: Any = None,
    weights: bool = True,
) -> ModelAdapter:
    """A ``ModelAdapter`` around the model and processor at ``path_or_spec``.

    ``chat_template`` overrides the processor's own: a Jinja string, or "chatml" / "plain"
    (``taid_vlm.models.tokenizer``). A processor without a template gets the plain one.
    ``device="auto"`` spreads a checkpoint's layers over every visible GPU (then CPU) with
    accelerate's device map: how a 72B teacher fits beside a small student in one process.
    ``tokenizer`` only applies to composed specs: a student built from parts takes its
    teacher's tokenizer so the two share a vocabulary (a checkpoint brings its own).
    ``weights=False`` reads a checkpoint's config and processor only and builds the model on the
    meta device: an adapter that renders records exactly as the model would see them, for a model
    that runs elsewhere (a served teacher, ``taid_vlm/teacher_server``).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    torch_dtype = resolve_dtype(dtype)
    template = NAMED_TEMPLATES.get(chat_template, chat_template) if chat_template else None
    if is_composed_spec(path_or_spec):
        model, processor = _build_composed(path_or_spec, tokenizer)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
    else:
        device_map = "auto" if device == "auto" else None
        model, processor = _from_pretrained(str(path_or_spec), torch_dtype, trust_remote_code, device_map, weights)
        if not weights:
            device = None
    if device == "auto":
        device = None  # already placed, layer by layer, across the visible devices
    return adapt(model, processor, role=role, device=device, chat_template=template, source=str(path_or_spec))


class ModelLoadError(UserError):
    """A model argument that does not load; the message names the argument and what to pass."""


def load_model(role: str, source: str, **options: Any) -> ModelAdapter:
    """``load`` for a model a user named on the command line or in a recipe: its failures (a bad
    path, a missing processor, a bad dtype) are worded as that argument, ``teacher=...: why; what
    to do``. Used by ``distill`` (train/preflight.py) and ``teacher-cache``."""
    try:
        return load(source, role=role, **options)
    except UserError:
        raise
    except (OSError, ValueError, ImportError, KeyError) as e:
        raise ModelLoadError(f"{role}={source}: cannot load it ({' '.join(str(e).split())}); pass a checkpoint "
                             "folder, a hub id available offline, or a composed:<size> spec") from e


def adapt(
    model: torch.nn.Module,
    processor: Any,
    role: str = "student",
    device: str | torch.device | None = None,
    chat_template: str | None = None,
    source: str = "model",
) -> ModelAdapter:
    """Wrap a model already in memory (built, trained or loaded elsewhere) in an adapter."""
    family = detect_family(model.config.model_type, source=source)
    if device is not None:
        model = model.to(device)
    return ModelAdapter(model, processor, family, role=role, chat_template=chat_template)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return None
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[key]


# ---- building -------------------------------------------------------------------------------------


def is_composed_spec(spec: Any) -> bool:
    """A composed-VLM spec ("composed:<size>?..." or a dict) rather than a checkpoint path."""
    return isinstance(spec, dict) or (isinstance(spec, str) and spec.startswith("composed:"))


def _build_composed(spec: Any, tokenizer: Any = None) -> tuple[torch.nn.Module, Any]:
    try:
        from .composed import build_from_spec
    except ImportError as e:
        raise ImportError(f"composed model spec {spec!r} needs taid_vlm.models.composed, which failed: {e}") from e
    return build_from_spec(spec, tokenizer=tokenizer)


def _from_pretrained(path: str, dtype: torch.dtype | None, trust_remote_code: bool,
                     device_map: str | None = None, weights: bool = True) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    base = adapter_base(path)  # a peft adapter folder (save_adapter_only): its base, the adapter merged in
    if base is not None:
        model, processor = _from_pretrained(base, dtype, trust_remote_code, device_map, weights)
        if (Path(path) / "tokenizer_config.json").is_file():  # the run saved its processor and template beside it
            processor = type(processor).from_pretrained(path, trust_remote_code=trust_remote_code)
        return (merge_adapter_folder(model, path) if weights else model), processor
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "directory" if Path(path).exists() else "hub id (offline runs need a local copy)"
        raise OSError(f"cannot read a model config from {where} {path!r}: {e}") from e
    family = detect_family(config.model_type, source=path)
    auto_processor = AutoTokenizer if family.text_only else AutoProcessor
    try:
        processor = auto_processor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - translated into what to install, original chained
        raise processor_error(path, config.model_type, e) from e
    auto_model = AutoModelForCausalLM if family.text_only else AutoModelForImageTextToText
    if not weights:
        with torch.device("meta"):
            return auto_model.from_config(config, trust_remote_code=trust_remote_code), processor
    model = auto_model.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map)
    return model, processor


_INSTALL_HINTS = (
    (re.compile(r"num2words", re.I), "pip install num2words"),
    (re.compile(r"torchvision|video.?processor", re.I), "pip install torchvision (video processors need it)"),
    (re.compile(r"\bPIL\b|Pillow", re.I), "pip install pillow"),
    (re.compile(r"sentencepiece", re.I), "pip install sentencepiece"),
    (re.compile(r"protobuf", re.I), "pip install protobuf"),
    (re.compile(r"timm", re.I), "pip install timm"),
)


def processor_error(path: str, model_type: str, error: Exception) -> Exception:
    """Say what to install when a processor cannot be built (the usual cause offline)."""
    message = str(error)
    for pattern, hint in _INSTALL_HINTS:
        if pattern.search(message) or pattern.search(type(error).__name__):
            return ImportError(f"cannot build the {model_type} processor of {path!r}: {hint}. Cause: {message.strip()}")
    if isinstance(error, ImportError):
        hint = "install the missing package named below"
        return ImportError(f"cannot build the {model_type} processor of {path!r}: {hint}. Cause: {message.strip()}")
    return ValueError(f"cannot build the {model_type} processor of {path!r}: {message.strip()}")


# ---- pair checks -------------------------------------------------------------------------------------


def check_vocab_compatible(teacher: Any, student: Any, sample: int | None = None) -> None:
    """Raise unless the ids both tokenizers share map to the same strings.

    Accepts adapters or tokenizers. The comparison covers the whole shared range (a 150k
    vocabulary takes well under a second); ``sample`` limits it to that many evenly spaced ids
    plus every added token. Sizes may differ: the loss uses the shared first columns.
    """
    tok_t, tok_s = _tokenizer_of(teacher), _tokenizer_of(student)
    shared = min(len(tok_t), len(tok_s))
    ids = list(range(shared))
    if sample is not None and sample < shared:
        added = set(tok_t.added_tokens_decoder) | set(tok_s.added_tokens_decoder)
        step = max(1, shared // sample)
        ids = sorted(set(range(0, shared, step)) | {i for i in added if i < shared})
    strings_t = tok_t.convert_ids_to_tokens(ids)
    strings_s = tok_s.convert_ids_to_tokens(ids)
    if strings_t == strings_s:
        return
    for i, a, b in zip(ids, strings_t, strings_s):
        if a != b:
            raise UserError(
                f"teacher and student vocabularies differ at id {i}: teacher {a!r}, student {b!r} "
                f"(sizes {len(tok_t)} and {len(tok_s)}): the two tokenizers differ. Set cross_tokenizer: span (any "
                "loss, taid included) or uld (loss=uld) to distil across tokenizers (docs/CROSS-TOKENIZER.md)"
            )


def _tokenizer_of(x: Any) -> Any:
    if isinstance(x, ModelAdapter):
        return x.tokenizer
    return getattr(x, "tokenizer", x)


def check_alignment(
    teacher_out: ResponseOutputs,
    student_out: ResponseOutputs,
    records: Sequence[Record] | Sequence[str],
    tokenizer: Any = None,
) -> ResponseOutputs:
    """Raise unless both models return the same response tokens; return the teacher's outputs
    on the student's device and float dtype, ready for the loss.

    The error names the record and the first differing position within its response tokens
    (decoded when a ``tokenizer`` is given).
    """
    record_ids = [r.id if isinstance(r, Record) else str(r) for r in records]
    t_ids, s_ids = teacher_out.token_ids.cpu(), student_out.token_ids.cpu()
    t_rec, s_rec = teacher_out.record_index.cpu(), student_out.record_index.cpu()
    if not (torch.equal(t_ids, s_ids) and torch.equal(t_rec, s_rec)):
        raise UserError(_misalignment(t_ids, s_ids, t_rec, s_rec, record_ids, tokenizer))
    device, dtype = _placement(student_out)
    return teacher_out.to(device=device, dtype=dtype)


def _placement(out: ResponseOutputs) -> tuple[torch.device, torch.dtype]:
    ref = out.hidden if out.hidden is not None else out.logits
    assert ref is not None, "ResponseOutputs holds neither hidden states nor logits"
    return ref.device, ref.dtype


def _misalignment(t_ids, s_ids, t_rec, s_rec, record_ids: list[str], tokenizer: Any) -> str:
    for r, record_id in enumerate(record_ids):
        a, b = t_ids[t_rec == r].tolist(), s_ids[s_rec == r].tolist()
        if a == b:
            continue
        pos = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shown = lambda seq: _token_at(seq, pos, tokenizer)  # noqa: E731
        return (
            f"teacher and student response tokens differ in record {record_id!r} at response position {pos}: "
            f"teacher {shown(a)}, student {shown(b)} (lengths {len(a)} and {len(b)}). The two chat templates or "
            "tokenizers split the answer differently; use templates that write the answer the same way "
            "(e.g. both ChatML), or set cross_tokenizer: span to align the two by their text"
        )
    return "teacher and student returned different numbers of records"


def _token_at(seq: list[int], pos: int, tokenizer: Any) -> str:
    if pos >= len(seq):
        return "<end of response>"
    if tokenizer is None:
        return f"id {seq[pos]}"
    return f"id {seq[pos]} {_tokenizer_of(tokenizer).convert_ids_to_tokens(seq[pos])!r}"
