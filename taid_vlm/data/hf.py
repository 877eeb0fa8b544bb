"""Hugging Face ``datasets`` as a record source, with a column mapping per task.

Public VQA, caption and chat sets each name their columns differently; a mapping from our
field names to theirs (``columns={"answers": "multiple_choice_answer"}``) is all a user has to
write. Rows are converted one at a time, so with ``streaming=True`` nothing is cached or
decoded ahead of use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .errors import DataError, guarded
from .parse import RowContext, caption_record, chat_record, llava_record, vqa_record
from .records import Record

# Our field -> the columns tried when the user maps nothing, in order.
TASK_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "vqa": {
        "question": ("question",), "answers": ("answers", "answer", "multiple_choice_answer"),
        "image": ("image",), "id": ("id", "question_id"), "context": ("context",), "family": ("family",),
    },
    "caption": {
        "references": ("references", "captions", "caption", "sentences"), "image": ("image",),
        "id": ("id", "image_id"),
    },
    "chat": {"messages": ("messages",), "prompt": ("prompt",), "response": ("response",), "id": ("id",)},
    "llava": {"conversations": ("conversations",), "image": ("image",), "images": ("images",), "id": ("id",)},
}
REQUIRED = {"vqa": ("question", "answers"), "caption": ("references",), "chat": (), "llava": ("conversations",)}
_BUILDERS = {"vqa": vqa_record, "caption": caption_record, "chat": chat_record, "llava": llava_record}


def iter_hf_records(
    source: str | Path,
    *,
    task: str = "auto",
    columns: dict[str, str] | None = None,
    split: str = "train",
    streaming: bool = True,
    cache_dir: str | None = None,
    config: str | None = None,
    skip_bad: bool = False,
    require_response: bool = True,
    check_images: str = "exists",
    image_dir: str | Path | None = None,
    shuffle_seed: int | None = None,
    shuffle_buffer: int = 10_000,
    skip: int = 0,
) -> Iterator[Record]:
    """Records from a saved dataset folder, a parquet/arrow/csv file, an imagefolder or a hub name.

    ``task`` is one of vqa, caption, chat, llava, or auto (guessed from the column names).
    ``columns`` maps our field names to the dataset's columns; a field or column that does not
    exist is an error that lists what does. Image paths stored as text resolve against
    ``image_dir`` (default: the dataset's folder). ``shuffle_seed``: the rows in a seeded order (a
    streamed set through a ``shuffle_buffer``-row buffer, a saved folder, memory-mapped, by a full
    permutation); ``skip``: the first rows of that order are passed over before any is decoded (how
    a training stream resumes).
    """
    source = str(source).removeprefix("hf:") if str(source).startswith("hf:") else source
    dataset, base_dir = _open(source, split, streaming, cache_dir, config)
    if shuffle_seed is not None:
        import datasets

        streamed = isinstance(dataset, datasets.IterableDataset)
        dataset = dataset.shuffle(seed=shuffle_seed, buffer_size=shuffle_buffer) if streamed else dataset.shuffle(seed=shuffle_seed)
    if skip:
        dataset = dataset.skip(skip)
    base_dir = Path(image_dir) if image_dir is not None else base_dir
    names = _column_names(dataset, source)
    task = _task(task, names, columns or {}, source)
    mapping = _mapping(task, names, columns or {}, source)
    label = f"{source}[{split}]"
    builder = _BUILDERS[task]

    def build(item: tuple[int, dict]) -> Record:
        i, row = item
        ctx = RowContext(f"{label} row {i}", f"{Path(str(source)).name}-{split}-{i}", base_dir, check_images)
        row = _rename(row, mapping)
        return builder(row, ctx, require_response) if task in ("chat", "llava") else builder(row, ctx)

    return guarded(_numbered(dataset, skip), build, label, skip_bad)


def _numbered(dataset: Any, start: int = 0) -> Iterator[tuple[int, dict]]:
    rows = iter(dataset)
    try:
        yield from enumerate(rows, start=start)
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def _open(source: str | Path, split: str, streaming: bool, cache_dir: str | None, config: str | None):
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            data = datasets.load_from_disk(str(path))
            if isinstance(data, datasets.DatasetDict):
                data = _pick_split(data, split, source)
            return data, path
        if path.is_file():
            builder = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}.get(path.suffix, "json")
            data = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train",
                                         streaming=streaming, cache_dir=cache_dir)
            return data, path.parent
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split, streaming=streaming, cache_dir=cache_dir), path
        return datasets.load_dataset(str(source), config, split=split, streaming=streaming, cache_dir=cache_dir), None
    except DataError:
        raise
    except (ValueError, KeyError) as e:
        if "split" in str(e).lower():
            raise DataError(str(source), f"split {split!r} not found ({e})",
                            "pass split= with an existing split") from None
        raise DataError(str(source), f"cannot open dataset: {e}", "check the path or the dataset name") from None
    except Exception as e:  # hub errors (offline, missing repo) come in many types
        raise DataError(
            str(source), f"cannot open dataset ({type(e).__name__}: {e})",
            "no local file or folder has this name; for a hub dataset go online (unset HF_HUB_OFFLINE / "
            "HF_DATASETS_OFFLINE) or download it and pass the local folder",
        ) from None


def _pick_split(data: Any, split: str, source: str | Path) -> Any:
    if split not in data:
        raise DataError(str(source), f"split {split!r} not found; splits are {sorted(data)}", "pass split=")
    return data[split]


def _column_names(dataset: Any, source: str | Path) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:  # streaming datasets without declared features: look at the first row
        rows = _numbered(dataset)
        first = next(rows, (0, None))[1]
        rows.close()
        if first is None:
            raise DataError(str(source), "the dataset is empty", "check the split")
        names = list(first)
    return list(names)


def _task(task: str, names: list[str], columns: dict[str, str], source: str | Path) -> str:
    if task != "auto":
        if task not in TASK_FIELDS:
            raise DataError(str(source), f"unknown task {task!r}", f"use one of {sorted(TASK_FIELDS)} or 'auto'")
        return task
    present = set(names) | set(columns)
    for task_name, marker in (("llava", "conversations"), ("chat", "messages"), ("vqa", "question")):
        if marker in present:
            return task_name
    if present & set(TASK_FIELDS["caption"]["references"]):
        return "caption"
    if "prompt" in present:
        return "chat"
    raise DataError(
        str(source), f"cannot tell the task from columns {names}",
        "pass task='vqa'|'caption'|'chat'|'llava' and columns={our_field: your_column}",
    )


def _mapping(task: str, names: list[str], columns: dict[str, str], source: str | Path) -> dict[str, str]:
    """Our field -> dataset column, checked: unknown fields and missing columns are errors."""
    fields = TASK_FIELDS[task]
    for field, column in columns.items():
        if field not in fields:
            raise DataError(str(source), f"unknown field {field!r} for task {task!r}",
                            f"map one of {sorted(fields)} to a column")
        if column not in names:
            raise DataError(str(source), f"unknown column {column!r} (mapped from {field!r}); columns are {names}",
                            f"use columns={{{field!r}: <one of those>}}")
    mapping = dict(columns)
    for field, candidates in fields.items():
        if field not in mapping:
            found = next((c for c in candidates if c in names), None)
            if found is not None:
                mapping[field] = found
    missing = [f for f in REQUIRED[task] if f not in mapping]
    if task == "chat" and "messages" not in mapping and "prompt" not in mapping:
        missing.append("messages")
    if missing:
        raise DataError(str(source), f"no column for {missing} (task {task!r}); columns are {names}",
                        "map them, e.g. columns={" + ", ".join(f"{m!r}: '<column>'" for m in missing) + "}")
    return mapping


def _rename(row: dict, mapping: dict[str, str]) -> dict:
    """The row under our field names; unmapped columns pass through into the record's meta."""
    used = set(mapping.values())
    out = {k: v for k, v in row.items() if k not in used and k not in mapping}
    for field, column in mapping.items():
        out[field] = row[column]
    return out
