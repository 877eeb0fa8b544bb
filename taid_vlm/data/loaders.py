"""Loaders for the formats people bring, and one dispatcher that recognises them.

Every loader has an iterator form (``iter_*``: lazy, images stay on disk as paths until an
adapter calls ``load_image``) and a list form (``load_*``). Bad rows raise a DataError naming
file and line; ``skip_bad=True`` drops them and warns once with the count.

Formats:
  llava    JSON array or JSONL rows with ``image``/``images`` + ``conversations`` (from: human|gpt)
  chat     JSONL rows with ``messages`` (role/content) - the text-only path; or prompt/response
  vqa      evaluation rows ``id, image, question, answers`` (``answer`` accepted)
  caption  evaluation rows ``id, image, references`` (``captions`` / ``caption`` accepted)
  coco     a COCO captions annotation file (``images`` + ``annotations``)
  hf       Hugging Face datasets: local parquet / arrow / imagefolder / saved dataset, or a hub name
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DataError, guarded
from .jsonl import _starts_with_array, iter_json_rows, read_json_object
from .parse import CHECK_IMAGES, RowContext, caption_record, chat_record, llava_record, vqa_record
from .records import Record

FORMATS = ("auto", "llava", "chat", "vqa", "caption", "coco", "hf")
_HF_SUFFIXES = {".parquet", ".arrow", ".csv"}


def iter_records(
    source: str | Path,
    format: str = "auto",
    *,
    skip_bad: bool = False,
    require_response: bool = True,
    check_images: str = "exists",
    image_dir: str | Path | None = None,
    limit: int | None = None,
    **hf_options: Any,
) -> Iterator[Record]:
    """Stream records from a file, a folder or a hub dataset; ``format='auto'`` sniffs it.

    ``require_response`` applies to training formats (llava, chat): a conversation without an
    assistant turn has nothing to distil. ``hf_options`` go to ``iter_hf_records`` (task,
    columns, split, streaming, cache_dir, config).
    """
    if format not in FORMATS:
        raise DataError(str(source), f"unknown format {format!r}", f"use one of {FORMATS}")
    if check_images not in CHECK_IMAGES:
        raise DataError(str(source), f"check_images={check_images!r}", f"use one of {CHECK_IMAGES}")
    if format == "auto":
        format = detect_format(source)
    if format == "hf":
        from .hf import iter_hf_records

        records = iter_hf_records(source, skip_bad=skip_bad, require_response=require_response,
                                  check_images=check_images, image_dir=image_dir, **hf_options)
    else:
        if hf_options:
            raise DataError(str(source), f"options {sorted(hf_options)} only apply to Hugging Face datasets",
                            "drop them")
        records = _iter_file(Path(source), format, skip_bad, require_response, check_images, image_dir)
    return itertools.islice(records, limit) if limit is not None else records


def load_records(source: str | Path, format: str = "auto", **options: Any) -> list[Record]:
    """``iter_records`` as a list (small and medium sets; use ``iter_records`` for large ones)."""
    return list(iter_records(source, format, **options))


def load_llava(path: str | Path, **options: Any) -> list[Record]:
    return load_records(path, "llava", **options)


def load_chat(path: str | Path, **options: Any) -> list[Record]:
    return load_records(path, "chat", **options)


def load_vqa_eval(path: str | Path, **options: Any) -> list[Record]:
    """VQA evaluation rows -> prompt-only records with ``answers`` and ``meta['family'|'question']``.

    ``path`` is a JSONL/JSON file, or a Hugging Face source (then ``columns=`` may map fields).
    """
    if _is_hf_source(path):
        return load_records(path, "hf", **{"task": "vqa", **options})
    return load_records(path, "vqa", **options)


def load_caption_eval(path: str | Path, **options: Any) -> list[Record]:
    """Caption rows, a COCO annotation file or a Hugging Face source -> ``<image>``-only
    records with ``references``."""
    if _is_hf_source(path):
        return load_records(path, "hf", **{"task": "caption", **options})
    fmt = "coco" if _is_coco_annotations(Path(path)) else "caption"
    return load_records(path, fmt, **options)


# ----------------------------------------------------------------------------- detection


def detect_format(source: str | Path) -> str:
    """Name the format of ``source`` from its suffix, folder contents or first row."""
    path = Path(source)
    if _is_hf_source(source):
        return "hf"
    if not path.exists():
        raise DataError(str(source), "file not found", "check the path")
    if _is_coco_annotations(path):
        return "coco"
    if _starts_with_array(path):  # the first element only (LLaVA's 665k-row array is a gigabyte)
        from .table import _array_rows

        for _, _, index, row in _array_rows(path):
            return _format_of_row(row, f"{path}[{index}]")
    else:
        for where, row in iter_json_rows(path):
            return _format_of_row(row, where)
    raise DataError(str(path), "the file holds no rows", "check that it is the right file")


def _is_hf_source(source: str | Path) -> bool:
    """``hf:NAME``, a folder, a parquet/arrow/csv file, or a name that is no local path (a hub dataset)."""
    if str(source).startswith("hf:"):
        return True
    path = Path(source)
    if path.is_dir() or path.suffix in _HF_SUFFIXES:
        return True
    return not path.exists() and path.suffix not in (".json", ".jsonl") and not str(source).startswith((".", "/"))


def _format_of_row(row: Any, where: str) -> str:
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(where, f"rows must be JSON objects, got {type(row).__name__}", "one object per line")
    for key, fmt in (("conversations", "llava"), ("messages", "chat"), ("question", "vqa"),
                     ("references", "caption"), ("captions", "caption"), ("caption", "caption"), ("prompt", "chat")):
        if key in row:
            return fmt
    raise DataError(
        where, f"cannot tell the format from keys {sorted(row)}",
        "expected 'conversations' (LLaVA), 'messages' (chat), 'question' (VQA) or 'references' "
        "(captions); or pass format= explicitly",
    )


def _is_coco_annotations(path: Path) -> bool:
    """A single JSON object with ``images`` and ``annotations`` (one line or pretty-printed)."""
    if not path.is_file() or path.suffix != ".json" or _starts_with_array(path):  # an array is no COCO file
        return False
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", errors="replace")
    if not first.lstrip().startswith("{"):
        return False
    try:
        data = json.loads(first)
    except json.JSONDecodeError:
        try:
            data = read_json_object(path)  # pretty-printed: a JSONL file would have failed too
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
    return isinstance(data, dict) and "annotations" in data and "images" in data


# ----------------------------------------------------------------------------- files

_BUILDERS: dict[str, Callable[..., Record]] = {
    "llava": llava_record, "chat": chat_record, "vqa": vqa_record, "caption": caption_record,
}


def _iter_file(path: Path, fmt: str, skip_bad: bool, require_response: bool, check_images: str,
               image_dir: str | Path | None) -> Iterator[Record]:
    base_dir = Path(image_dir) if image_dir is not None else path.parent
    if fmt == "coco":
        rows: Iterator[tuple[str, Any]] = _coco_rows(path)
        fmt = "caption"
    else:
        rows = iter_json_rows(path)
    builder = _BUILDERS[fmt]
    counter = itertools.count()

    def build(item: tuple[str, Any]) -> Record:
        where, row = item
        if isinstance(row, DataError):
            raise row
        ctx = RowContext(where, f"{path.stem}-{next(counter)}", base_dir, check_images)
        if fmt in ("llava", "chat"):
            return builder(row, ctx, require_response)
        return builder(row, ctx)

    return guarded(rows, build, str(path), skip_bad)


def _coco_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """COCO captions: group ``annotations`` by ``image_id`` onto ``images[].file_name``."""
    data = read_json_object(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(str(path), "not a COCO captions file (needs 'images' and 'annotations')",
                        "use format='caption'")
    captions: dict[Any, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann["caption"])
    for i, image in enumerate(data["images"]):
        row = {"id": image["id"], "image": image["file_name"], "references": captions.get(image["id"], [])}
        yield f"{path}:images[{i}]", row
