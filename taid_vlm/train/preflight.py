"""Checks that run before a distillation touches its output directory.

Everything that can be known to fail from the config, the models and the data alone is found
here, with a message naming the argument, record or model and what to do: devices that are
not there, models that cannot be loaded or are the same model twice, too few records for one
batch, sequences longer than the models can take. A run that passes these checks fails, if at
all, only for reasons that show up while training (a non-finite loss, a full disk).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data import DataError, Record
from ..data.records import IMAGE_PLACEHOLDER
from ..errors import RunError
from ..losses.triton_chunk import resolve_chunk_kernel
from ..models import ModelAdapter, load_model  # noqa: F401 - load_model: the loop loads through preflight
from .config import ConfigError, DistillConfig

# Upper bound of the tokens a template adds around the text of one record (roles, specials).
_TEMPLATE_SLACK = 256


def check_devices(config: DistillConfig, default_device: torch.device) -> None:
    """A requested accelerator that is not present fails now, not after the models loaded."""
    for name, value in (("teacher_device", config.teacher_device), ("run device", str(default_device))):
        if value is None:
            continue
        kind = re.match(r"[a-z]+", value)
        kind = kind.group(0) if kind else value
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"{name}={value} but no CUDA device is visible; use cpu or check CUDA_VISIBLE_DEVICES")
        if kind == "cuda" and ":" in value and int(value.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"{name}={value} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"{name}={value} but MPS is not available here; use cpu")
    try:  # an explicit chunk_kernel=triton where it cannot run fails now, not at the first loss
        resolve_chunk_kernel(config.chunk_kernel, default_device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_pair(config: DistillConfig, teacher: ModelAdapter, student: ModelAdapter) -> None:
    """The same model as teacher and student distils a zero loss: refused unless asked for."""
    if config.allow_self_distill:
        return
    same_source = str(config.teacher) == str(config.student) or (
        Path(str(config.teacher)).exists() and Path(str(config.teacher)).resolve() == Path(str(config.student)).resolve())
    weightless = any(p.is_meta for p in teacher.model.parameters())  # a served teacher: its weights are elsewhere
    if same_source or (not weightless and _same_weights(teacher.model, student.model)):
        raise RunError(f"teacher and student are the same model ({config.teacher}); the distillation loss would be "
                       "zero. Pass a different --student, or --allow-self-distill if this is intended")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return False
    # all() stops at the first differing tensor: two different models cost one comparison
    return all(torch.equal(sa[k].detach(), sb[k].detach().to(sa[k].device, sa[k].dtype)) for k in sa)


def check_data(config: DistillConfig, records: Sequence[Record], world_size: int, student: ModelAdapter,
               teacher: ModelAdapter | None) -> None:
    """Enough records for one batch; every record fits the models (or max_length trims it)."""
    if not records:
        raise DataError(config.data, "no usable training records (every record was skipped or the limit is 0)",
                        "check the file, or drop skip_bad to see why records fail")
    needed = config.batch_size * world_size
    if len(records) < needed:
        raise ConfigError(f"batch_size={config.batch_size} x {world_size} process(es) needs at least {needed} records "
                          f"but {config.data} has {len(records)}; lower batch_size or add data")
    models = [m for m in (student, teacher) if m is not None]
    limit = min(max_positions(m) or 10**9 for m in models)
    if config.max_length is not None:
        if config.max_length > limit:
            raise ConfigError(f"max_length={config.max_length} exceeds the {limit} positions the models can take; "
                              f"set max_length <= {limit}")
        return  # every batch is fitted to max_length (prompts trimmed, responses never)
    if limit >= 10**9:
        return
    per_image = _tokens_per_image(records, student)
    for record in _may_not_fit(records, per_image, limit):
        for model in models:
            length = model.render([record]).input_ids.shape[1]
            if length > limit:
                where = record.meta.get("source", config.data)
                raise DataError(f"{where} (record {record.id!r})",
                                f"{length} tokens for the {model.role}, which takes at most {limit} positions",
                                f"set max_length={limit} to trim prompts (responses are never cut), or remove the record")


def max_positions(model: ModelAdapter) -> int | None:
    config = model.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text, config):
        value = getattr(cfg, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _may_not_fit(records: Sequence[Record], per_image: int, limit: int) -> Iterator[Record]:
    """The records whose size estimate exceeds ``limit`` (a byte-level token is at least one byte, so the
    others surely fit). A table (data/table.py) is estimated from its index without building a record."""
    estimates = getattr(records, "size_estimates", None)
    if estimates is not None:
        row_bytes, images = estimates()
        for index in np.nonzero(row_bytes + per_image * images + _TEMPLATE_SLACK > limit)[0].tolist():
            yield records[index]
        return
    for record in records:
        if _utf8_bytes(record) + per_image * len(record.images) + _TEMPLATE_SLACK > limit:
            yield record


def _with_images(records: Sequence[Record], n: int) -> list[Record]:
    estimates = getattr(records, "size_estimates", None)
    if estimates is not None:
        return [records[i] for i in np.nonzero(estimates()[1])[0][:n].tolist()]
    return [r for r in records if r.images][:n]


def _utf8_bytes(record: Record) -> int:
    return sum(len(m["content"].encode("utf-8")) for m in record.messages)


def _tokens_per_image(records: Sequence[Record], student: ModelAdapter) -> int:
    """Tokens one image takes, measured on a few records (twice the largest seen, to be safe); a record
    whose image cannot be read is passed over here (the run meets it later, per skip_bad)."""
    seen, measured = 0, 0
    sample = _with_images(records, 16)
    for record in sample:
        bare = Record(record.id, [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, "")} for m in record.messages])
        try:
            extra = student.render([record]).input_ids.shape[1] - student.render([bare]).input_ids.shape[1]
        except OSError:
            continue
        seen, measured = max(seen, extra // len(record.images)), measured + 1
        if measured == 4:
            break
    return 2 * seen + 64 if sample else 0
