"""What a cache entry depends on: the record's content and the teacher that scored it.

A cached row is only valid for the exact record (text and image bytes) and the exact teacher
(weights, tokenizer, processor, chat template, max_length) that produced it. Both are reduced
to short hex digests so a mismatch can be reported per record, naming what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.records import Record
from ..models import ModelAdapter


def teacher_name(spec: str) -> str:
    """A teacher as the cache records it: a local path made absolute, a hub id or spec as given."""
    path = Path(str(spec))
    return str(path.resolve()) if path.exists() else str(spec)


def record_hash(record: Record) -> str:
    """sha256 over the record's messages and the bytes of its images (paths are not enough)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(record.messages, sort_keys=True, ensure_ascii=False).encode())
    for image in record.images:
        if isinstance(image, Image.Image):
            digest.update(f"{image.mode}{image.size}".encode())
            digest.update(image.tobytes())
        else:
            digest.update(_image_file_bytes(record, Path(image)))
    return digest.hexdigest()[:32]


def _image_file_bytes(record: Record, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        where = f"{record.meta.get('source', '<memory>')} (record {record.id!r})"
        raise type(e)(f"{where}: cannot read image {path}: {e}") from None


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names + raw bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def teacher_fingerprint(adapter: ModelAdapter, name: str, max_length: int | None) -> dict[str, Any]:
    """Everything about the teacher that changes its logits on a record, as comparable strings."""
    vocab = json.dumps(sorted(adapter.tokenizer.get_vocab().items()), ensure_ascii=False)
    processor = adapter.processor
    config = processor.to_json_string() if hasattr(processor, "to_json_string") else type(processor).__name__
    return {
        "name": teacher_name(name),
        "model_type": adapter.model_type,
        # a served teacher (teacher_server.ServedModel) fingerprints its checkpoint's files instead
        "weights_sha256": getattr(adapter, "weights_sha256", None) or weights_hash(adapter.model),
        "tokenizer_sha256": _text_hash(vocab),
        "processor_sha256": _text_hash(config),
        "chat_template_sha256": _text_hash(adapter.chat_template or ""),
        "max_length": max_length,
        "vocab_size": int(adapter.lm_head().weight.shape[0]),
    }
