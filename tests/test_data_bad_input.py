"""Bad input: every error names the file, the line or record, and the fix; skip_bad counts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from taid_vlm.data import (
    DataError,
    SkippedRecordsWarning,
    iter_hf_records,
    load_caption_eval,
    load_llava,
    load_records,
    load_vqa_eval,
)

FIX = Path(__file__).parent / "fixtures"
BAD = FIX / "llava_bad.jsonl"


def _rows_file(tmp_path: Path, rows: list, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _only(tmp_path: Path, row: dict, fmt: str = "llava", **options) -> str:
    """The error message for a file holding just ``row``."""
    with pytest.raises(DataError) as info:
        load_records(_rows_file(tmp_path, [row]), fmt, **options)
    return str(info.value)


def test_missing_image_names_file_line_record_path_and_fix(tmp_path):
    row = {"id": "r1", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>"},
                                                                 {"from": "gpt", "value": "x"}]}
    message = _only(tmp_path, row)
    assert "data.jsonl:1" in message and "'r1'" in message and "nope.png" in message and "Fix:" in message


def test_record_without_assistant_turn_explains_what_to_do(tmp_path):
    message = _only(tmp_path, {"id": "r2", "conversations": [{"from": "human", "value": "hi"}]})
    assert "'r2'" in message and "no assistant turn" in message and "load_vqa_eval" in message
    # Prompt-only rows are fine where no response is needed.
    records = load_records(_rows_file(tmp_path, [{"conversations": [{"from": "human", "value": "hi"}]}]),
                           require_response=False)
    assert not records[0].has_response


@pytest.mark.parametrize("row, expected", [
    ({"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]}, "role 'robot'"),
    ({"image": str(FIX / "images/red.png"), "conversations": [
        {"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]}, "2 <image> placeholder"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]}, "assistant turn 1 is empty"),
    ({"conversations": "hello"}, "must be a list"),
    ({"dialog": []}, "needs 'conversations'"),
    ({"image": "http://x/y.png", "conversations": [{"from": "gpt", "value": "x"}]}, "is a URL"),
])
def test_malformed_llava_rows(tmp_path, row, expected):
    message = _only(tmp_path, row)
    assert expected in message and "data.jsonl:1" in message


def test_vqa_and_caption_rows_need_their_fields(tmp_path):
    assert "answers missing or empty" in _only(tmp_path, {"question": "q?", "answers": []}, "vqa")
    assert "needs 'references'" in _only(tmp_path, {"image": "x.png", "answer": "y"}, "caption")
    assert "neither an image nor a text context" in _only(tmp_path, {"references": ["a"]}, "caption")


def test_unreadable_image_is_caught_when_asked_to_open(tmp_path):
    row = {"id": "b", "image": str(FIX / "images/broken.png"), "question": "q?", "answer": "a"}
    path = _rows_file(tmp_path, [row])
    assert len(load_vqa_eval(path)) == 1  # the cheap check only sees that the file exists
    with pytest.raises(DataError, match="image unreadable"):
        load_vqa_eval(path, check_images="open")
    # Opening it later names the record and where it came from.
    (record,) = load_vqa_eval(path)
    with pytest.raises(OSError, match=r"data.jsonl:1 \(record 'b'\)"):
        record.open_images()


def test_missing_image_when_not_checked_fails_at_open_with_record(tmp_path):
    row = {"id": "gone", "image": "gone.png", "references": ["a"]}
    (record,) = load_caption_eval(_rows_file(tmp_path, [row]), check_images="none")
    with pytest.raises(FileNotFoundError, match="record 'gone'.*gone.png"):
        record.open_images()


def test_skip_bad_drops_and_counts_in_one_warning():
    with pytest.raises(DataError, match="llava_bad.jsonl:2 .*'missing-image'"):
        load_llava(BAD)
    with pytest.warns(SkippedRecordsWarning, match=r"skipped 5 bad record\(s\) from .*llava_bad.jsonl") as caught:
        records = load_llava(BAD, skip_bad=True)
    assert [r.id for r in records] == ["good"]
    assert "and 2 more" in str(caught[0].message)


def test_no_warning_when_nothing_is_skipped():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_llava(FIX / "llava.jsonl", skip_bad=True)) == 2


def test_invalid_json_line_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: invalid JSON"):
        load_vqa_eval(path)


def test_unknown_format_and_undetectable_rows(tmp_path):
    with pytest.raises(DataError, match="unknown format 'yaml'"):
        load_records(FIX / "vqa.jsonl", "yaml")
    with pytest.raises(DataError, match=r"cannot tell the format from keys \['foo'\]"):
        load_records(_rows_file(tmp_path, [{"foo": 1}]))
    with pytest.raises(DataError, match="only apply to Hugging Face"):
        load_records(FIX / "vqa.jsonl", columns={"question": "q"})


def test_hf_unknown_column_and_field_list_what_exists():
    with pytest.raises(DataError, match=r"unknown column 'quest'.*columns are \['image', 'q',"):
        list(iter_hf_records(FIX / "hf_vqa.parquet", columns={"question": "quest"}))
    with pytest.raises(DataError, match=r"unknown field 'questoin' for task 'vqa'"):
        list(iter_hf_records(FIX / "hf_vqa.parquet", task="vqa", columns={"questoin": "q"}))
    with pytest.raises(DataError, match=r"no column for \['question'\].*columns=\{'question'"):
        list(iter_hf_records(FIX / "hf_vqa.parquet", task="vqa"))
    with pytest.raises(DataError, match="cannot tell the task"):
        list(iter_hf_records(FIX / "hf_vqa.parquet"))


def test_hf_missing_local_dataset_or_offline_hub_says_so():
    with pytest.raises(DataError, match="cannot open dataset"):
        list(iter_hf_records("nobody/no-such-dataset-taid"))
