"""Turn one row (a dict from JSON or a dataset) into a Record, or raise a DataError naming it.

The row builders are shared by the file loaders and the Hugging Face loader, so a LLaVA row
means the same thing whether it comes from a JSON file or a parquet shard.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from .errors import DataError
from .records import IMAGE_PLACEHOLDER, ImageLike, Record

ROLE_ALIASES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}
CHECK_IMAGES = ("none", "exists", "open")


@dataclass(frozen=True)
class RowContext:
    """Where a row comes from: for error messages, relative image paths and image checks."""

    where: str
    default_id: str
    base_dir: Path | None = None
    check_images: str = "exists"


# ----------------------------------------------------------------------------- images


def resolve_image(value: Any, ctx: RowContext) -> ImageLike:
    """A path (absolute, checked per ``ctx.check_images``) or an in-memory PIL image."""
    if isinstance(value, Image.Image):
        filename = getattr(value, "filename", "")
        # Dataset images opened from files keep their path: hold the path, not the pixels.
        return _checked_path(Path(filename), ctx) if filename and os.path.exists(filename) else value
    if isinstance(value, dict):
        if value.get("bytes"):
            return _open_bytes(value["bytes"], ctx)
        if value.get("path"):
            return _checked_path(_absolute(value["path"], ctx), ctx)
        raise DataError(_where(ctx), f"image entry {value!r} has neither 'path' nor 'bytes'", "give a file path")
    if isinstance(value, (str, Path)) and str(value):
        if str(value).startswith(("http://", "https://")):
            raise DataError(_where(ctx), f"image {value} is a URL", "download the images and use local paths")
        return _checked_path(_absolute(value, ctx), ctx)
    raise DataError(_where(ctx), f"image {value!r} is not a path, a PIL image or {{'path'|'bytes'}}",
                    "fix the image field")


def _absolute(value: str | Path, ctx: RowContext) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and ctx.base_dir is not None:
        path = ctx.base_dir / path
    return path.absolute()


def _checked_path(path: Path, ctx: RowContext) -> str:
    if ctx.check_images != "none" and not path.is_file():
        raise DataError(
            _where(ctx), f"image not found: {path}",
            "fix the path (relative paths resolve against the data file's folder, or pass image_dir=)"
            " or skip such records with skip_bad=True",
        )
    if ctx.check_images == "open":
        try:
            with Image.open(path) as im:
                im.load()  # decodes every pixel: verify() misses truncated JPEGs
        except Exception as e:  # PIL raises many types for corrupt files
            raise DataError(_where(ctx), f"image unreadable: {path} ({e})",
                            "replace the file or use skip_bad=True") from None
    return str(path)


def _open_bytes(data: bytes, ctx: RowContext) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Exception as e:
        raise DataError(_where(ctx), f"image bytes unreadable ({e})", "fix the image or use skip_bad=True") from None


def _where(ctx: RowContext) -> str:
    return f"{ctx.where} (record {ctx.default_id!r})"


# ----------------------------------------------------------------------------- messages


def place_images(messages: list[dict[str, str]], n_images: int, ctx: RowContext) -> list[dict[str, str]]:
    """Make the ``<image>`` placeholders explicit: one per image, in the text.

    Rows with images but no placeholder get them in front of the first user turn (the
    convention the Record documents); any other mismatch is an error, not a guess.
    """
    count = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if count == n_images:
        return messages
    if count == 0:
        first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first_user is None:
            raise DataError(_where(ctx), f"{n_images} image(s) but no user turn to attach them to", "add a user turn")
        messages = [dict(m) for m in messages]
        prefix = "\n".join([IMAGE_PLACEHOLDER] * n_images)
        messages[first_user]["content"] = f"{prefix}\n{messages[first_user]['content']}".rstrip("\n")
        return messages
    raise DataError(
        _where(ctx), f"{count} {IMAGE_PLACEHOLDER} placeholder(s) but {n_images} image(s)",
        f"use one {IMAGE_PLACEHOLDER} per image (or none, to put all images before the first user turn)",
    )


def check_turns(messages: list[dict[str, str]], ctx: RowContext, require_response: bool) -> None:
    if not messages:
        raise DataError(_where(ctx), "no conversation turns", "add user/assistant turns")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise DataError(_where(ctx), f"assistant turn {i} is empty", "fill in the response or drop the record")
    if require_response and not any(m["role"] == "assistant" for m in messages):
        raise DataError(
            _where(ctx), "no assistant turn, so nothing to distil",
            "add a 'gpt'/'assistant' turn, load it as an evaluation file (load_vqa_eval / "
            "load_caption_eval), or pass skip_bad=True",
        )


def _role(raw: Any, i: int, ctx: RowContext) -> str:
    role = ROLE_ALIASES.get(str(raw).lower()) if raw is not None else None
    if role is None:
        raise DataError(_where(ctx), f"turn {i} has role {raw!r}", f"use one of {sorted(ROLE_ALIASES)}")
    return role


def _text(value: Any, field: str, ctx: RowContext) -> str:
    if not isinstance(value, str):
        raise DataError(_where(ctx), f"{field} must be a string, got {type(value).__name__}", f"fix {field}")
    return value


# ----------------------------------------------------------------------------- row kinds

LLAVA_KEYS = {"id", "image", "images", "conversations", "meta"}
CHAT_KEYS = {"id", "messages", "images", "meta", "prompt", "response"}
VQA_KEYS = {"id", "question_id", "image", "context", "question", "answers", "answer", "family", "meta"}
CAPTION_KEYS = {"id", "image_id", "image", "file_name", "context", "references", "captions", "caption", "meta"}


def record_id(row: dict, ctx: RowContext, keys: Iterable[str] = ("id",)) -> str:
    for key in keys:
        if row.get(key) not in (None, ""):
            return str(row[key])
    return ctx.default_id


def _meta(row: dict, known: set[str], ctx: RowContext) -> dict[str, Any]:
    meta = {k: v for k, v in row.items() if k not in known}
    if isinstance(row.get("meta"), dict):
        meta.update(row["meta"])
    meta["source"] = ctx.where
    return meta


def _images(row: dict, ctx: RowContext) -> list[ImageLike]:
    raw = row.get("images")
    if raw is None:
        raw = [] if row.get("image") in (None, "") else [row["image"]]
    elif not isinstance(raw, list):
        raw = [raw]
    return [resolve_image(v, ctx) for v in raw]


def _require(row: Any, keys: tuple[str, ...], kind: str, ctx: RowContext) -> None:
    if not isinstance(row, dict):
        raise DataError(_where(ctx), f"expected a JSON object, got {type(row).__name__}", "one object per row")
    if not any(k in row for k in keys):
        raise DataError(
            _where(ctx), f"a {kind} row needs {' or '.join(repr(k) for k in keys)}; it has {sorted(row)}",
            "rename the field, or pass format=/columns= to say what the row is",
        )


def llava_record(row: Any, ctx: RowContext, require_response: bool = True) -> Record:
    """LLaVA / ShareGPT4V / Mantis style: ``image(s)`` + ``conversations`` of ``from``/``value``."""
    _require(row, ("conversations",), "LLaVA", ctx)
    ctx = replace(ctx, default_id=record_id(row, ctx))
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise DataError(_where(ctx), "'conversations' must be a list of {from, value}", "fix the row")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "value" not in turn:
            raise DataError(_where(ctx), f"turn {i} is {turn!r}, expected {{'from', 'value'}}", "fix the turn")
        role = _role(turn.get("from", turn.get("role")), i, ctx)
        messages.append({"role": role, "content": _text(turn["value"], f"turn {i} value", ctx)})
    return _finish(row, messages, ctx, LLAVA_KEYS, require_response)


def chat_record(row: Any, ctx: RowContext, require_response: bool = True) -> Record:
    """Chat JSONL / UltraChat: ``messages`` of ``role``/``content`` (or ``prompt``+``response``).

    Content may be a string or a list of parts (``{"type": "text"|"image", ...}``); image
    parts become placeholders in the text and entries of the record's images.
    """
    _require(row, ("messages", "prompt"), "chat", ctx)
    ctx = replace(ctx, default_id=record_id(row, ctx))
    if "messages" not in row:
        row = {**row, "messages": [{"role": "user", "content": row["prompt"]}]
               + ([{"role": "assistant", "content": row["response"]}] if row.get("response") is not None else [])}
    if not isinstance(row["messages"], list):
        raise DataError(_where(ctx), "'messages' must be a list of {role, content}", "fix the row")
    messages, part_images = [], []
    for i, m in enumerate(row["messages"]):
        if not isinstance(m, dict) or "content" not in m:
            raise DataError(_where(ctx), f"message {i} is {m!r}, expected {{'role', 'content'}}", "fix the message")
        content = m["content"]
        if isinstance(content, list):
            content = _flatten_parts(content, part_images, i, ctx)
        messages.append({"role": _role(m.get("role"), i, ctx), "content": _text(content, f"message {i} content", ctx)})
    if part_images:
        row = {**row, "images": list(row.get("images") or []) + part_images}
    return _finish(row, messages, ctx, CHAT_KEYS, require_response)


def _flatten_parts(parts: list, images: list, i: int, ctx: RowContext) -> str:
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(_text(part.get("text"), f"message {i} text part", ctx))
        elif kind == "image":
            value = part.get("image", part.get("path"))
            if value is not None:
                images.append(value)
            texts.append(IMAGE_PLACEHOLDER)
        else:
            raise DataError(_where(ctx), f"message {i} has a content part {part!r}",
                            "use {'type': 'text'|'image', ...}")
    return "\n".join(texts)


def _finish(row: dict, messages: list, ctx: RowContext, known: set[str], require_response: bool) -> Record:
    check_turns(messages, ctx, require_response)
    images = _images(row, ctx)
    messages = place_images(messages, len(images), ctx)
    return Record(ctx.default_id, messages, images, meta=_meta(row, known, ctx))


def vqa_record(row: Any, ctx: RowContext) -> Record:
    """An evaluation question: the user turn only; ``answers`` holds every accepted answer."""
    _require(row, ("question",), "VQA", ctx)
    ctx = replace(ctx, default_id=record_id(row, ctx, ("id", "question_id")))
    question = _text(row["question"], "question", ctx)
    answers = _string_list(row.get("answers", row.get("answer")), ("answer",), "answers", ctx)
    images = _images(row, ctx)
    parts = _shown(images, row, ctx)
    meta = _meta(row, VQA_KEYS, ctx)
    meta["question"] = question
    if row.get("family") is not None:
        meta["family"] = str(row["family"])
    messages = [{"role": "user", "content": "\n".join(parts + [question])}]
    return Record(ctx.default_id, messages, images, answers=answers, meta=meta)


def caption_record(row: Any, ctx: RowContext) -> Record:
    """An evaluation image (or text context) with its reference captions; no prompt text."""
    _require(row, ("references", "captions", "caption"), "caption", ctx)
    ctx = replace(ctx, default_id=record_id(row, ctx, ("id", "image_id")))
    raw = row.get("references", row.get("captions", row.get("caption")))
    references = _string_list(raw, ("raw", "caption"), "references", ctx)
    if "image" not in row and row.get("file_name"):
        row = {**row, "image": row["file_name"]}
    images = _images(row, ctx)
    parts = _shown(images, row, ctx)
    if not parts:
        raise DataError(_where(ctx), "caption row has neither an image nor a text context",
                        "add 'image' (or 'context')")
    messages = [{"role": "user", "content": "\n".join(parts)}]
    return Record(ctx.default_id, messages, images, references=references, meta=_meta(row, CAPTION_KEYS, ctx))


def _shown(images: list, row: dict, ctx: RowContext) -> list[str]:
    """What the evaluation prompt shows: the images' placeholders, then any text ``context``
    (the text-only scenes describe the scene there instead of showing an image)."""
    context = [_text(row["context"], "context", ctx)] if row.get("context") else []
    return [IMAGE_PLACEHOLDER] * len(images) + context


def _string_list(value: Any, dict_keys: tuple[str, ...], field: str, ctx: RowContext) -> list[str]:
    """Accept a string, a list of strings, or a list of dicts (VQAv2 ``{"answer": ...}``)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(_where(ctx), f"{field} missing or empty (got {value!r})", f"give a non-empty list of {field}")
    out = []
    for item in value:
        if isinstance(item, dict):
            item = next((item[k] for k in dict_keys if k in item), None)
        if not isinstance(item, str):
            raise DataError(_where(ctx), f"{field} entry {item!r} is not a string", f"make {field} a list of strings")
        out.append(item)
    return out
