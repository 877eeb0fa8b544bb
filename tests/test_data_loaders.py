"""Each loader on the tiny committed fixtures, and the dispatcher that recognises them."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from PIL import Image

from taid_vlm.data import (
    IMAGE_PLACEHOLDER,
    DataError,
    detect_format,
    iter_records,
    load_caption_eval,
    load_chat,
    load_image,
    load_llava,
    load_records,
    load_vqa_eval,
)

FIX = Path(__file__).parent / "fixtures"
IMAGES = FIX / "images"


def _placeholders(record) -> int:
    return sum(m["content"].count(IMAGE_PLACEHOLDER) for m in record.messages)


def test_llava_json_array_maps_roles_images_and_placeholders():
    records = load_llava(FIX / "llava.json")
    assert [r.id for r in records] == ["one-image", "two-images", "no-placeholder", "llava-3"]
    one, two, bare, text_only = records
    assert [m["role"] for m in one.messages] == ["user", "assistant", "user", "assistant"]
    assert one.messages[0]["content"] == "<image>\nWhat color is the square?"
    # Relative paths resolve against the data file's folder, to absolute paths.
    assert one.images == [str((IMAGES / "red.png").absolute())]
    assert two.messages[0] == {"role": "system", "content": "You compare images."}
    assert two.images == [str((IMAGES / n).absolute()) for n in ("red.png", "blue.png")] and _placeholders(two) == 2
    # No placeholder but an image: it goes in front of the first user turn, explicitly.
    assert bare.messages[0]["content"] == "<image>\nDescribe it."
    assert text_only.images == [] and text_only.id == "llava-3"  # id from file stem and position
    assert two.meta["source_set"] == "mantis" and two.meta["source"].endswith("llava.json[1]")
    for r in records:
        r.validate()
        assert r.has_response


def test_llava_jsonl_matches_json_array():
    as_json, as_jsonl = load_llava(FIX / "llava.json")[:2], load_llava(FIX / "llava.jsonl")
    assert [(r.id, r.messages, r.images) for r in as_json] == [(r.id, r.messages, r.images) for r in as_jsonl]
    assert as_jsonl[1].meta["source"].endswith("llava.jsonl:2")


def test_chat_jsonl_messages_prompt_response_and_image_parts():
    c1, c2, c3, c4 = load_chat(FIX / "chat.jsonl")
    assert [m["role"] for m in c1.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert c1.images == [] and c1.id == "c1"
    assert c2.id == "chat-1" and c2.meta["prompt_id"] == "u2"
    assert c3.messages == [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    assert c4.messages[0]["content"] == "<image>\nColour?" and c4.images == [str((IMAGES / "blue.png").absolute())]


def test_vqa_eval_is_prompt_only_with_answers_and_aliases():
    q1, q7, q3 = load_vqa_eval(FIX / "vqa.jsonl")
    assert q1.messages == [{"role": "user", "content": "<image>\nWhat color is it?"}]
    assert not q1.has_response and len(q1.answers) == 10
    assert q1.meta["family"] == "query_color" and q1.meta["question"] == "What color is it?"
    assert q7.id == "7" and q7.answers == ["yes"]  # question_id, and the single `answer` alias
    assert q7.meta["answer_type"] == "yes/no"
    assert q3.answers == ["red", "crimson"]  # VQAv2-style answer dicts


def test_caption_eval_references_and_captions_alias():
    i1, i2 = load_caption_eval(FIX / "captions.jsonl")
    assert i1.messages == [{"role": "user", "content": IMAGE_PLACEHOLDER}] and len(i1.references) == 5
    assert i2.references == ["A blue square.", "Blue."]


def test_coco_annotation_file_groups_captions_per_image():
    records = load_caption_eval(FIX / "coco_captions.json", image_dir=IMAGES)
    assert [(r.id, r.references) for r in records] == [("1", ["A red square.", "Red."]), ("2", ["A blue square."])]
    assert records[0].images == [str((IMAGES / "red.png").absolute())]


def test_detect_format_recognises_every_fixture():
    expected = {"llava.json": "llava", "llava.jsonl": "llava", "chat.jsonl": "chat", "vqa.jsonl": "vqa",
                "captions.jsonl": "caption", "coco_captions.json": "coco", "hf_vqa.parquet": "hf", "hf_captions": "hf"}
    assert {name: detect_format(FIX / name) for name in expected} == expected
    with pytest.raises(DataError, match="file not found"):
        detect_format(FIX / "missing.jsonl")


def test_hf_parquet_with_column_mapping_and_embedded_images():
    records = load_records(FIX / "hf_vqa.parquet", columns={"question": "q"})
    assert [r.answers for r in records] == [["red"] * 8 + ["dark red", "orange"], ["blue"]]
    assert records[0].messages == [{"role": "user", "content": "<image>\nColor?"}]
    assert load_image(records[0].images[0]).getpixel((0, 0)) == (255, 0, 0)
    # A single-answer column mapped onto `answers` becomes a one-element list.
    single = load_records(FIX / "hf_vqa.parquet", columns={"question": "q", "answers": "multiple_choice_answer"})
    assert [r.answers for r in single] == [["red"], ["blue"]]
    # The eval loaders take Hugging Face sources too.
    assert [r.answers for r in load_vqa_eval(FIX / "hf_vqa.parquet", columns={"question": "q"})] == \
        [r.answers for r in records]


def test_hf_imagefolder_caption_dataset_keeps_paths_not_pixels():
    records = load_records(FIX / "hf_captions")
    assert [r.references for r in load_caption_eval(FIX / "hf_captions")] == [r.references for r in records]
    assert [r.references for r in records] == [["A green square.", "Green."], ["A yellow square.", "Yellow."]]
    assert all(isinstance(r.images[0], str) and Path(r.images[0]).is_file() for r in records)


def test_hf_saved_dataset_chat_and_non_streaming(tmp_path):
    import datasets

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "id": "a"},
            {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "id": "b"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    records = load_records(tmp_path / "saved")
    assert [(r.id, r.messages[-1]["content"]) for r in records] == [("a", "hello"), ("b", "4")]
    cached = load_records(FIX / "hf_vqa.parquet", columns={"question": "q"}, streaming=False,
                          cache_dir=str(tmp_path / "cache"))
    assert len(cached) == 2


def test_iter_records_is_lazy_and_images_open_only_on_demand(tmp_path):
    copied = (tmp_path / "red.png")
    copied.write_bytes((IMAGES / "red.png").read_bytes())
    data = tmp_path / "data.jsonl"
    row = '{"id": "%d", "image": "red.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red"}]}\n'
    data.write_text("".join(row % i for i in range(3)) + "{broken\n")
    stream = iter_records(data)
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)  # the broken last line has not been read yet, so no error so far
    assert first.images == [str(copied.absolute())] and isinstance(first.images[0], str)
    assert [im.size for im in first.open_images()] == [(4, 4)]
    assert len(list(iter_records(data, limit=2))) == 2
    with pytest.raises(DataError, match=r"data.jsonl:4"):
        list(stream)


def test_load_image_converts_to_rgb():
    (gray,) = [r for r in load_llava(FIX / "llava.json") if r.id == "no-placeholder"]
    image = gray.open_images()[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.getpixel((0, 0)) == (128, 128, 128)


def test_hf_csv_with_text_image_paths_resolves_against_image_dir(tmp_path):
    table = tmp_path / "vqa.csv"
    table.write_text("image,question,answer\nred.png,Color?,red\nblue.png,Color?,blue\n")
    records = load_records(table, image_dir=FIX / "images")
    assert [(Path(r.images[0]).name, r.answers) for r in records] == [("red.png", ["red"]), ("blue.png", ["blue"])]
    with pytest.raises(DataError, match=r"vqa.csv\[train\] row 0 .*image not found"):
        load_records(table)
