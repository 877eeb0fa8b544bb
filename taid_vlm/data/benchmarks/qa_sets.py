"""TextVQA, VizWiz and GQA question files as distributed, one reader each.

- TextVQA (``TextVQA_0.5.1_val.json``): ``{"data": [{question_id, image_id, question, answers: [10
  strings]}]}``; images ``<image_id>.jpg`` (train_images/ holds train and val).
- VizWiz (``val.json``): a list of ``{image, question, answers: [{answer, answer_confidence}] x10,
  answer_type, answerable}``; one question per image, so the image name is the id.
- GQA (``testdev_balanced_questions.json``): ``{question_id: {imageId, question, answer, types:
  {structural, semantic}, ...}}``; images ``<imageId>.jpg``; one reference answer.

Test splits ship without answers; their records carry none and are answered, not scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import DataError
from ..records import Record
from .common import ReadOptions, describe, one_file, find_image, question_record, read_json, required, string_answers, wrong_layout

TEXTVQA_FILES = "TextVQA_0.5.1_<split>.json (a JSON object whose 'data' lists the questions)"
VIZWIZ_FILES = "the VizWiz VQA annotations (<split>.json, a JSON list of {image, question, answers, answerable})"
GQA_FILES = "a GQA questions file (<split>_balanced_questions.json, a JSON object keyed by question id)"


def read_textvqa(paths: Sequence[Path], options: ReadOptions) -> Iterator[Record]:
    path = one_file(paths, "textvqa", TEXTVQA_FILES)
    data = read_json(path, "textvqa", TEXTVQA_FILES)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise wrong_layout(path, "textvqa", describe(data), TEXTVQA_FILES)
    fix = "pass the TextVQA file as downloaded"
    for i, row in enumerate(data["data"]):
        where = f"{path}:data[{i}]"
        qid = required(row, "question_id", where, (int, str), fix)
        image_id = required(row, "image_id", where, str, fix)
        question = required(row, "question", where, str, fix)
        answers = string_answers(row["answers"], where) if "answers" in row else None
        meta = {"question_id": qid, "image_id": image_id, "set_name": row.get("set_name")}
        image = find_image([f"{image_id}.jpg"], options, where, str(qid), "the TextVQA images (train_images/ or test_images/)")
        yield question_record(str(qid), image, question, answers, meta, where)


def read_vizwiz(paths: Sequence[Path], options: ReadOptions) -> Iterator[Record]:
    path = one_file(paths, "vizwiz", VIZWIZ_FILES)
    data = read_json(path, "vizwiz", VIZWIZ_FILES)
    if not isinstance(data, list) or (data and not (isinstance(data[0], dict) and "image" in data[0])):
        raise wrong_layout(path, "vizwiz", describe(data), VIZWIZ_FILES)
    fix = "pass the VizWiz file as downloaded"
    for i, row in enumerate(data):
        where = f"{path}[{i}]"
        name = required(row, "image", where, str, fix)
        question = required(row, "question", where, str, fix)
        answers = string_answers(row["answers"], where) if "answers" in row else None
        meta: dict[str, Any] = {"image": name}
        if answers is not None:
            answerable = required(row, "answerable", where, int, fix)
            if answerable not in (0, 1):
                raise DataError(where, f"'answerable' is {answerable!r}, not 0 or 1", fix)
            meta.update(answerable=answerable, answer_type=required(row, "answer_type", where, str, fix))
        image = find_image([name], options, where, name, "the VizWiz images of this split (train/, val/ or test/)")
        yield question_record(name, image, question, answers, meta, where)


def read_gqa(paths: Sequence[Path], options: ReadOptions) -> Iterator[Record]:
    path = one_file(paths, "gqa", GQA_FILES)
    data = read_json(path, "gqa", GQA_FILES)
    first = next(iter(data.values()), None) if isinstance(data, dict) else None
    if not isinstance(data, dict) or not (first is None or (isinstance(first, dict) and "imageId" in first)):
        raise wrong_layout(path, "gqa", describe(data), GQA_FILES)
    fix = "pass the GQA questions file as downloaded"
    for qid, row in data.items():
        where = f"{path}:{qid}"
        image_id = required(row, "imageId", where, str, fix)
        question = required(row, "question", where, str, fix)
        answers = [required(row, "answer", where, str, fix)] if "answer" in row else None
        types = row.get("types") if isinstance(row.get("types"), dict) else {}
        meta = {"question_id": qid, "image_id": image_id, "structural": types.get("structural"),
                "semantic": types.get("semantic")}
        image = find_image([f"{image_id}.jpg"], options, where, qid, "the GQA images (images/)")
        yield question_record(qid, image, question, answers, meta, where)

