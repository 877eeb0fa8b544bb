"""VQAv2 and OK-VQA as distributed: a questions file and an annotations file in the VQA API layout.

``v2_OpenEnded_mscoco_<split>_questions.json`` holds ``{"data_subtype", "questions": [{question_id,
image_id, question}]}``; ``v2_mscoco_<split>_annotations.json`` holds ``{"annotations": [{question_id,
image_id, answers: [{answer, ...}] x10, answer_type, question_type, multiple_choice_answer}]}``.
OK-VQA ships the same two files (``OpenEnded_mscoco_val2014_questions.json``,
``mscoco_val2014_annotations.json``). Images are COCO files named from the image id; test-dev has
no annotations, so its questions are answered for the evaluation server and not scored. The
server wants an answer for every test2015 question, so the test2015 questions file may come with
the test-dev one: only test-dev is asked, and the submission is filled up with empty answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import DataError
from ..records import Record
from .common import ReadOptions, describe, find_image, question_record, read_json, required, string_answers, wrong_layout

EXPECTED = ("the questions file (v2_OpenEnded_mscoco_<split>_questions.json) and, to score, "
            "its annotations file (v2_mscoco_<split>_annotations.json); for a test-dev submission, "
            "the test-dev and the test2015 questions files")
TEST_DEV, TEST = "test-dev2015", "test2015"


def read_vqa_api(paths: Sequence[Path], options: ReadOptions, benchmark: str = "vqav2") -> Iterator[Record]:
    """One record per question, in the questions file's order, with its ten human answers."""
    questions_path, questions, annotations_path, annotations = _split_files(paths, benchmark)
    subtype = questions.get("data_subtype") or (annotations or {}).get("data_subtype")
    by_id = _annotations_by_id(annotations_path, annotations) if annotations is not None else None
    fix = f"pass the {benchmark} questions file as downloaded"
    for i, q in enumerate(required(questions, "questions", str(questions_path), list, fix)):
        where = f"{questions_path}:questions[{i}]"
        qid = required(q, "question_id", where, int, fix)
        image_id = required(q, "image_id", where, int, fix)
        question = required(q, "question", where, str, fix)
        meta: dict[str, Any] = {"question_id": qid, "image_id": image_id}
        answers = None
        if by_id is not None:
            answers = _answers(by_id, qid, image_id, where, annotations_path, meta)
        folder = _image_subtype(subtype)
        image = find_image(coco_image_names(image_id, subtype), options, where, str(qid),
                           f"the COCO {folder} images" if folder else "the COCO images")
        yield question_record(str(qid), image, question, answers, meta, where)


def coco_image_names(image_id: int, subtype: str | None) -> list[str]:
    """COCO 2014 names (``COCO_val2014_000000000042.jpg``, as the VQA API builds them) first, then 2017 names."""
    names = [f"{image_id:012d}.jpg"]
    folder = _image_subtype(subtype)
    return [f"COCO_{folder}_{image_id:012d}.jpg", *names] if folder else names


def _image_subtype(subtype: str | None) -> str | None:
    """test-dev questions are a subset of test2015, whose files carry the test2015 name."""
    return "test2015" if subtype == "test-dev2015" else subtype


def test2015_question_ids(paths: Sequence[Path]) -> list[int] | None:
    """Every test2015 question id when a test2015 questions file came with the test-dev one, else None."""
    if len(paths) != 2:
        return None
    files = [read_json(p, "vqav2", EXPECTED) for p in paths]
    full = next((f for f in files if isinstance(f, dict) and f.get("data_subtype") == TEST and "questions" in f), None)
    if full is None:
        return None
    return [q["question_id"] for q in full["questions"] if isinstance(q, dict) and "question_id" in q]


def _split_files(paths: Sequence[Path], benchmark: str) -> tuple[Path, dict, Path | None, dict | None]:
    """Tell the questions file from the annotations file by content, in any order (and test-dev from test2015)."""
    if not 1 <= len(paths) <= 2:
        raise DataError(", ".join(map(str, paths)) or "--data", f"{benchmark} takes one or two files, got {len(paths)}",
                        f"pass {EXPECTED}")
    found: dict[str, tuple[Path, dict]] = {}
    for path in paths:
        data = read_json(path, benchmark, EXPECTED)
        kind = next((k for k in ("questions", "annotations") if isinstance(data, dict) and k in data), None)
        if kind is None:
            raise wrong_layout(path, benchmark, f"{describe(data)}, neither 'questions' nor 'annotations'", EXPECTED)
        if kind == "questions" and kind in found and {data.get("data_subtype"), found[kind][1].get("data_subtype")} == {
                TEST_DEV, TEST}:
            if data.get("data_subtype") == TEST_DEV:
                found[kind] = (path, data)  # ask test-dev; test2015 only fills the submission
            continue
        if kind in found:
            raise DataError(str(path), f"a second {kind} file (the first is {found[kind][0]})", f"pass {EXPECTED}")
        found[kind] = (path, data)
    if "questions" not in found:
        raise DataError(str(paths[0]), "an annotations file without its questions file", f"pass {EXPECTED}")
    questions_path, questions = found["questions"]
    annotations_path, annotations = found.get("annotations", (None, None))
    return questions_path, questions, annotations_path, annotations


def _annotations_by_id(path: Path, data: dict) -> dict[int, tuple[str, dict]]:
    fix = "pass the annotations file as downloaded"
    out: dict[int, tuple[str, dict]] = {}
    for i, ann in enumerate(required(data, "annotations", str(path), list, fix)):
        where = f"{path}:annotations[{i}]"
        out[required(ann, "question_id", where, int, fix)] = (where, ann)
    return out


def _answers(by_id: dict, qid: int, image_id: int, where: str, annotations_path: Path | None,
             meta: dict[str, Any]) -> list[str]:
    if qid not in by_id:
        raise DataError(f"{where} (question_id {qid})", f"no annotation in {annotations_path}",
                        "pass the annotations file of the same split as the questions file")
    ann_where, ann = by_id[qid]
    if ann.get("image_id", image_id) != image_id:
        raise DataError(ann_where, f"image_id {ann.get('image_id')!r} differs from the question's {image_id}",
                        "pass the annotations file of the same split as the questions file")
    answers = string_answers(required(ann, "answers", ann_where, list, "pass the file as downloaded"), ann_where)
    for key in ("answer_type", "question_type", "multiple_choice_answer"):
        if isinstance(ann.get(key), str):
            meta[key] = ann[key]
    return answers
