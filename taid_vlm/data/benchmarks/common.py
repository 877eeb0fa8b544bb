"""What every benchmark reader shares: opening a distributed JSON file, finding an image, making
a record, and naming the file and entry in every error.

Readers turn the files a benchmark ships (not a converted copy) into prompt-only records; the
evaluation layer adds the benchmark's instruction and scores them. A record without answers or
references comes from a test split whose labels the benchmark keeps private: it can still be
answered and submitted, never scored.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..parse import CHECK_IMAGES, RowContext, resolve_image
from ..records import IMAGE_PLACEHOLDER, Record


@dataclass(frozen=True)
class ReadOptions:
    """Where images live, which split to keep (Karpathy files hold all splits) and how hard to check images."""

    image_dir: Path
    split: str | None = None
    check_images: str = "exists"

    def __post_init__(self) -> None:
        if self.check_images not in CHECK_IMAGES:
            raise DataError("check_images", f"{self.check_images!r} is not a check", f"use one of {CHECK_IMAGES}")


def read_json(path: Path, benchmark: str, expected: str) -> Any:
    """The parsed file, or one DataError naming it when it is missing or is not JSON."""
    if not path.is_file():
        raise DataError(str(path), "file not found", f"pass the {benchmark} file ({expected})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}", f"invalid JSON ({e.msg})",
                        f"pass the {benchmark} file as downloaded ({expected})") from None
    except UnicodeDecodeError:
        raise DataError(str(path), "not a UTF-8 text file", f"pass the {benchmark} file ({expected})") from None


def wrong_layout(path: Path, benchmark: str, found: str, expected: str) -> DataError:
    return DataError(str(path), f"not the {benchmark} layout: {found}", f"pass {expected}")


def describe(data: Any) -> str:
    """A short account of what a file holds, for layout errors ("a JSON list of 3 rows", "keys [...]")."""
    if isinstance(data, dict):
        keys = sorted(map(str, data))
        return f"a JSON object with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
    if isinstance(data, list):
        return f"a JSON list of {len(data)} entries"
    return f"a JSON {type(data).__name__}"


def required(row: Any, key: str, where: str, kinds: type | tuple[type, ...], fix: str) -> Any:
    """``row[key]`` of one of ``kinds``, or a DataError naming the entry and the field."""
    if not isinstance(row, dict):
        raise DataError(where, f"expected a JSON object, got {type(row).__name__}", fix)
    if key not in row:
        raise DataError(where, f"no {key!r} field (it has {sorted(map(str, row))})", fix)
    value = row[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise DataError(where, f"{key!r} is {value!r}, not {_kind_names(kinds)}", fix)
    return value


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join({"str": "a string", "int": "an integer", "list": "a list", "dict": "an object"}.get(
        k.__name__, k.__name__) for k in kinds)


def find_image(candidates: Sequence[str], options: ReadOptions, where: str, record_id: str, hint: str) -> str:
    """The first candidate file name under the image folder that exists, checked like any loader's image.

    Benchmarks name images differently across releases (COCO 2014 ``COCO_val2014_<id>.jpg`` vs
    2017 ``<id>.jpg``), so a reader may offer several names; a missing image names them all.
    Several questions share an image (five per COCO image in VQAv2), so lookups are cached.
    """
    folder = os.path.abspath(options.image_dir)
    found = _first_file(folder, tuple(candidates))
    if found is None:
        if options.check_images == "none":
            return os.path.join(folder, candidates[0])
        tried = ", ".join(os.path.join(folder, c) for c in candidates)
        raise DataError(f"{where} (record {record_id!r})", f"image not found: {tried}",
                        f"pass --images with the folder that holds {hint}")
    if options.check_images == "open":
        return str(resolve_image(found, RowContext(where, record_id, None, "open")))
    return found


@functools.lru_cache(maxsize=1 << 16)
def _first_file(folder: str, candidates: tuple[str, ...]) -> str | None:
    return next((p for p in (os.path.join(folder, c) for c in candidates) if os.path.isfile(p)), None)


def string_answers(value: Any, where: str, key: str = "answer") -> list[str]:
    """Answers as shipped: a list of strings (TextVQA) or of ``{"answer": ...}`` objects (VQA API, VizWiz)."""
    if not isinstance(value, list) or not value:
        raise DataError(where, f"answers are {value!r}, not a non-empty list", "pass the file as downloaded")
    out = []
    for i, item in enumerate(value):
        text = item.get(key) if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise DataError(where, f"answers[{i}] is {item!r}, not a string or {{{key!r}: string}}",
                            "pass the file as downloaded")
        out.append(text)
    return out


def question_record(record_id: str, image: str, question: str, answers: list[str] | None,
                    meta: dict[str, Any], where: str) -> Record:
    """A VQA question about one image; ``answers`` None for a test split without labels."""
    if not question.strip():
        raise DataError(f"{where} (record {record_id!r})", "the question is empty", "pass the file as downloaded")
    messages = [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"}]
    meta = {**meta, "question": question, "source": where}
    return Record(record_id, messages, [image], answers=answers, meta=meta)


def caption_record(record_id: str, image: str, references: list[str] | None, meta: dict[str, Any],
                   where: str) -> Record:
    """An image to caption; ``references`` None for a test split without captions."""
    if references is not None and (not references or not all(isinstance(r, str) and r.strip() for r in references)):
        raise DataError(f"{where} (record {record_id!r})", f"reference captions are {references!r}",
                        "every image needs non-empty caption strings; pass the file as downloaded")
    messages = [{"role": "user", "content": IMAGE_PLACEHOLDER}]
    return Record(record_id, messages, [image], references=references, meta={**meta, "source": where})


def one_file(paths: Sequence[Path], benchmark: str, expected: str) -> Path:
    if len(paths) != 1:
        raise DataError(", ".join(map(str, paths)) or "--data", f"{benchmark} takes one file, got {len(paths)}",
                        f"pass {expected}")
    return paths[0]
