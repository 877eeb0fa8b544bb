"""Read an evaluation file for one task: what each model is asked, and what it is scored against.

The task decides the fields a row must have (VQA: ``question`` + ``answers``; captions:
``references``; text: a conversation ending with an assistant turn). A file of another kind is
refused up front with the file, the missing field and the task that fits, rather than failing
deep inside scoring; a row lacking a field fails in the loader, which names file and line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data import detect_format, load_caption_eval, load_records, load_vqa_eval
from ..data.records import Record
from .errors import EvalError
from .prompts import TASKS, caption_prompt, conversation_prompt, last_answer, prompt_template, vqa_prompt

CONVERSATION_FORMATS = ("llava", "chat")
# Formats each task reads: its own evaluation rows, conversations (reference = last answer), HF sets.
TASK_FORMATS = {
    "vqa": ("vqa", *CONVERSATION_FORMATS, "hf"),
    "caption": ("caption", "coco", *CONVERSATION_FORMATS, "hf"),
    "text": (*CONVERSATION_FORMATS, "hf"),
}
NEEDED_FIELDS = {
    "vqa": "'question' and 'answers' (or a conversation whose last assistant turn is the answer)",
    "caption": "'references' (or 'captions', or a conversation whose last assistant turn is the caption)",
    "text": "'messages' or 'conversations' ending with an assistant turn (the reference)",
}
TASK_OF_FORMAT = {"vqa": "vqa", "caption": "caption", "coco": "caption", "llava": "text", "chat": "text"}


@dataclass
class EvalItem:
    """One thing to score: the prompt a model answers and the strings it is scored against.

    ``target`` is the prompt followed by the reference as the assistant turn: what the text
    task's perplexity scores.
    """

    id: str
    prompt: Record
    references: list[str]
    target: Record
    instruction: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSet:
    task: str
    source: str
    format: str
    items: list[EvalItem]
    prompt_template: str

    @property
    def has_images(self) -> bool:
        return any(item.prompt.images for item in self.items)

    @property
    def instructions(self) -> list[str]:
        """Every distinct instruction the harness added (exact strings), for the results."""
        return sorted({i.instruction for i in self.items if i.instruction is not None})


def load_eval_set(
    data: str | Path, task: str, limit: int | None = None, data_options: dict[str, Any] | None = None
) -> EvalSet:
    """The items of ``data`` for ``task``; ``data_options`` go to the loader (HF: split, columns)."""
    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EvalError(f"limit must be a positive number of items, got {limit!r}")
    source = str(data)
    fmt = detect_format(data)
    if fmt not in TASK_FORMATS[task]:
        raise EvalError(_wrong_task_message(source, task, fmt))
    options = {**(data_options or {}), "limit": limit}
    records = _load(source, task, fmt, options)
    if not records:
        raise EvalError(f"{source}: no records to evaluate; check the file (and --split for a dataset)")
    items = [_item(record, task, fmt, source) for record in records]
    _check_unique_ids(items, source)
    return EvalSet(task, source, fmt, items, prompt_template(task, _kind(records, fmt)))


def _wrong_task_message(source: str, task: str, fmt: str) -> str:
    fits = TASK_OF_FORMAT.get(fmt)
    hint = f"; it holds {fmt} rows, so use --task {fits}" if fits else ""
    return f"{source}: --task {task} needs rows with {NEEDED_FIELDS[task]}, and this file has none{hint}"


def _load(source: str, task: str, fmt: str, options: dict[str, Any]) -> list[Record]:
    loaders: dict[str, Callable[..., list[Record]]] = {"vqa": load_vqa_eval, "caption": load_caption_eval}
    if fmt in CONVERSATION_FORMATS:
        return load_records(source, fmt, require_response=True, **options)
    if fmt == "hf" and task == "text":
        return load_records(source, "hf", require_response=True, **options)
    return loaders[task](source, **options)


def _kind(records: list[Record], fmt: str) -> str:
    if fmt in CONVERSATION_FORMATS or (fmt == "hf" and all(r.has_response for r in records)):
        return "conversations"
    return "rows" if any(r.images for r in records) else "text rows"


def _item(record: Record, task: str, fmt: str, source: str) -> EvalItem:
    where = f"{record.meta.get('source', source)} (record {record.id!r})"
    if record.has_response:
        references = [last_answer(record)]
        prompt, instruction = vqa_prompt(record) if task == "vqa" else conversation_prompt(record)
        target = prompt.with_messages(prompt.messages + [{"role": "assistant", "content": references[0]}])
    elif task == "text":
        raise EvalError(f"{where}: --task text needs an assistant turn to score against; it has none")
    else:
        references = record.answers if task == "vqa" else record.references
        if not references:
            field_name = "answers" if task == "vqa" else "references"
            raise EvalError(f"{where}: no {field_name!r} to score --task {task} against; add them to the row")
        prompt, instruction = vqa_prompt(record) if task == "vqa" else caption_prompt(record)
        target = prompt.with_messages(prompt.messages + [{"role": "assistant", "content": references[0]}])
    return EvalItem(record.id, prompt, list(references), target, instruction, dict(record.meta))


def _check_unique_ids(items: list[EvalItem], source: str) -> None:
    """Per-sample results are keyed by id, so two rows with one id would overwrite each other."""
    repeated = [i for i, n in Counter(item.id for item in items).items() if n > 1]
    if repeated:
        raise EvalError(
            f"{source}: record id(s) {repeated[:5]} occur more than once; give every row a unique 'id' "
            "(per-sample scores are keyed by it)"
        )
