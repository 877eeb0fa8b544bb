"""The synthetic scenes generator: determinism, speed, correct answers, true captions, balance.

Answers are recomputed here from each row's scene JSON by parsing the question text with an
independent implementation, so a question whose wording and answer disagree cannot pass.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from taid_vlm.data import (
    CAPTION_PROMPT,
    TEXT_CAPTION_PROMPT,
    VQA_SUFFIX,
    load_caption_eval,
    load_records,
    load_vqa_eval,
)
from taid_vlm.demo.shapes import FAMILIES, generate_shapes
from taid_vlm.demo.shapes.scenes import COLORS, SHAPES, SIZES

COLOR_NAMES, RELATION = set(COLORS), r"(left of|right of|above|below)"


# ----------------------------------------------------------------------------- an independent oracle


def parse_np(phrase: str) -> dict:
    """'large red circles' -> {'size': 'large', 'color': 'red', 'shape': 'circle'}; 'objects' -> {}."""
    out = {}
    for word in phrase.split():
        word = word[:-1] if word.endswith("s") and word[:-1] in SHAPES + ("object",) else word
        if word in SIZES:
            out["size"] = word
        elif word in COLOR_NAMES:
            out["color"] = word
        elif word in SHAPES:
            out["shape"] = word
        elif word != "object":
            raise AssertionError(f"unexpected word {word!r} in {phrase!r}")
    return out


def select(objects: list, phrase: str) -> list:
    wanted = parse_np(phrase)
    return [o for o in objects if all(o[k] == v for k, v in wanted.items())]


def the(objects: list, phrase: str) -> dict:
    found = select(objects, phrase)
    assert len(found) == 1, f"'the {phrase}' is not unique"
    return found[0]


def holds(a: dict, relation: str, b: dict) -> bool:
    return {"left of": a["col"] < b["col"], "right of": a["col"] > b["col"],
            "above": a["row"] < b["row"], "below": a["row"] > b["row"]}[relation]


def oracle(question: str, objects: list) -> set:
    """Every valid answer to ``question`` about ``objects``."""
    rules = [
        (r"What (color|shape|size) is the (.+)\?", lambda m: {the(objects, m[2])[m[1]]}),
        (rf"How many (.+) are {RELATION} the (.+)\?",
         lambda m: {str(sum(holds(o, m[2], the(objects, m[3])) for o in select(objects, m[1])))}),
        (r"How many (.+) are there\?", lambda m: {str(len(select(objects, m[1])))}),
        (r"Is there an? (.+)\?", lambda m: {"yes" if select(objects, m[1]) else "no"}),
        (r"Are there more (.+) than (.+)\?",
         lambda m: {"yes" if len(select(objects, m[1])) > len(select(objects, m[2])) else "no"}),
        (r"Is the (.+) left or right of the (.+)\?",
         lambda m: {"left" if holds(the(objects, m[1]), "left of", the(objects, m[2])) else "right"}),
        (r"Is the (.+) above or below the (.+)\?",
         lambda m: {"above" if holds(the(objects, m[1]), "above", the(objects, m[2])) else "below"}),
        (rf"Name the color of any object {RELATION} the (.+)\.",
         lambda m: {o["color"] for o in objects if holds(o, m[1], the(objects, m[2]))}),
        (r"Name the color of any (.+)\.", lambda m: {o["color"] for o in select(objects, m[1])}),
    ]
    for pattern, answer in rules:
        match = re.fullmatch(pattern, question)
        if match:
            return answer(match)
    raise AssertionError(f"no rule for question {question!r}")


def caption_objects(caption: str) -> Counter:
    """The (color, shape) multiset a caption mentions, whatever its template and order."""
    numbers = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    found = Counter()
    pattern = r"\b(a|an|two|three|four|five|six) (?:(?:small|large) )?(\w+) (circle|square|triangle|diamond)s?\b"
    for number, color, shape in re.findall(pattern, caption.lower()):
        found[(color, shape)] += numbers[number]
    return found


# ----------------------------------------------------------------------------- fixtures


def _read(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("shapes_big")
    start = time.perf_counter()
    summary = generate_shapes(out, n_train=1000, n_test=300, seed=3)
    return out, summary, time.perf_counter() - start


@pytest.fixture(scope="module")
def text_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shapes_text")
    return out, generate_shapes(out, n_train=40, n_test=30, seed=5, text=True)


# ----------------------------------------------------------------------------- tests


def test_thousand_scenes_in_seconds(big):
    out, summary, seconds = big
    assert summary["counts"]["train_records"] == 1000 and len(list((out / "images").iterdir())) == 1300
    assert seconds < 30, f"1,000 training + 300 test scenes took {seconds:.1f}s"


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    kwargs = dict(n_train=12, n_test=6, image_size=48)
    a, b, c = (generate_shapes(tmp_path / d, seed=s, **kwargs) for d, s in (("a", 1), ("b", 1), ("c", 2)))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 18 + 4
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a == b
    assert (tmp_path / "a/train.jsonl").read_bytes() != (tmp_path / "c/train.jsonl").read_bytes()


def test_scenes_obey_their_constraints(big):
    out, _, _ = big
    for row in _read(out / "test_caption.jsonl"):
        scene = row["scene"]
        objects = scene["objects"]
        assert 2 <= len(objects) <= 6
        assert len({o["col"] for o in objects}) == len({o["row"] for o in objects}) == len(objects)
        for i, a in enumerate(objects):
            assert a["r"] <= a["x"] <= scene["image_size"] - a["r"] and a["r"] <= a["y"] <= scene["image_size"] - a["r"]
            for b in objects[i + 1:]:
                assert ((a["x"] - b["x"]) ** 2 + (a["y"] - b["y"]) ** 2) ** 0.5 > a["r"] + b["r"]
    seen = Counter()
    for row in _read(out / "train.jsonl"):
        seen.update((o["shape"], o["color"], o["size"]) for o in row["scene"]["objects"])
    assert {s for s, _, _ in seen} == set(SHAPES) and {c for _, c, _ in seen} == COLOR_NAMES
    assert len(SHAPES) >= 3 and len(COLORS) >= 6 and len(SIZES) == 2


def test_images_show_the_scene(big):
    out, _, _ = big
    for row in _read(out / "test_caption.jsonl")[:40]:
        image = Image.open(out / row["image"])
        assert image.mode == "RGB" and image.size == (64, 64)
        for o in row["scene"]["objects"]:  # the centre of every shape is inside it
            pixel = image.getpixel((int(o["x"]), int(o["y"])))
            assert max(abs(p - q) for p, q in zip(pixel, COLORS[o["color"]])) < 40, (row["id"], o)
        assert image.getpixel((0, 0)) == (255, 255, 255) or any(
            o["x"] < 2 * o["r"] and o["y"] < 2 * o["r"] for o in row["scene"]["objects"])


def test_every_test_answer_matches_the_scene(big):
    out, _, _ = big
    rows = _read(out / "test_vqa.jsonl")
    assert len(rows) > 2800  # ~10 questions per test image
    for row in rows:
        assert set(row["answers"]) == oracle(row["question"], row["scene"]["objects"]), row
        assert all(len(a.split()) == 1 for a in row["answers"])
    assert {r["family"] for r in rows} == set(FAMILIES)
    multi = [r for r in rows if len(r["answers"]) > 1]
    assert multi and {r["family"] for r in multi} == {"any_color", "any_relate"}


def test_training_conversations_are_correct_and_mixed(big):
    out, _, _ = big
    rows = _read(out / "train.jsonl")
    answered = Counter()
    for row in rows:
        turns = row["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 4  # 3 QA turns + 1 caption turn
        assert turns[0]["value"].startswith("<image>\n") and row["image"].startswith("images/")
        assert sum(t["value"].count("<image>") for t in turns) == 1
        captions = [i for i in range(0, 8, 2) if turns[i]["value"].endswith(CAPTION_PROMPT)]
        assert len(captions) == 1
        for i in range(0, 8, 2):
            if i in captions:
                assert caption_objects(turns[i + 1]["value"]) == Counter(
                    (o["color"], o["shape"]) for o in row["scene"]["objects"])
                continue
            question = turns[i]["value"].removeprefix("<image>\n")
            assert question.endswith(VQA_SUFFIX)
            valid = oracle(question.removesuffix(VQA_SUFFIX), row["scene"]["objects"])
            assert turns[i + 1]["value"] in valid
            if len(valid) > 1:
                answered[turns[i + 1]["value"]] += 1
    assert len(answered) >= 4  # a multi-answer question does not always get the same answer
    positions = Counter(next(i for i in range(0, 8, 2) if r["conversations"][i]["value"].endswith(CAPTION_PROMPT))
                        for r in rows)
    assert len(positions) == 4  # the caption turn moves around


def test_five_distinct_true_captions_per_test_image(big):
    out, _, _ = big
    for row in _read(out / "test_caption.jsonl"):
        refs = row["references"]
        assert len(refs) == 5 == len(set(refs)) and row["prompt"] == CAPTION_PROMPT
        truth = Counter((o["color"], o["shape"]) for o in row["scene"]["objects"])
        for ref in refs:
            assert caption_objects(ref) == truth, (ref, truth)


def test_answers_are_balanced_and_summary_reports_true_baselines(big):
    out, summary, _ = big
    rows = _read(out / "test_vqa.jsonl")
    for family in FAMILIES:
        family_rows = [r for r in rows if r["family"] == family]
        valid_for = Counter(a for r in family_rows for a in r["answers"])
        answer, hits = valid_for.most_common(1)[0]
        reported = summary["families"][family]
        assert reported["n"] == len(family_rows) >= 250
        assert reported["majority_baseline"] == pytest.approx(hits / len(family_rows), abs=1e-4)
        ceiling = {"exist": 0.55, "compare_count": 0.55, "query_size": 0.55, "query_shape": 0.32}.get(family, 0.4)
        assert reported["majority_baseline"] <= ceiling, (family, reported)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["counts"]["test_questions"] == len(rows)


def test_test_scenes_are_not_training_scenes(big):
    out, _, _ = big
    key = lambda scene: sorted((o["shape"], o["color"], o["size"], o["col"], o["row"]) for o in scene["objects"])  # noqa: E731
    train = {json.dumps(key(r["scene"])) for r in _read(out / "train.jsonl")}
    assert not train & {json.dumps(key(r["scene"])) for r in _read(out / "test_caption.jsonl")}


def test_generated_files_load_through_the_loaders(big):
    out, _, _ = big
    train = load_records(out / "train.jsonl", limit=5)
    assert train[0].images[0].endswith("train-00000.png") and train[0].meta["scene"]["objects"]
    vqa = load_vqa_eval(out / "test_vqa.jsonl")
    assert vqa[0].messages[0]["content"] == "<image>\n" + vqa[0].meta["question"]
    assert vqa[0].meta["family"] in FAMILIES and not vqa[0].has_response
    captions = load_caption_eval(out / "test_caption.jsonl")
    assert captions[0].messages[0]["content"] == "<image>" and len(captions[0].references) == 5
    assert captions[0].meta["prompt"] == CAPTION_PROMPT


def test_text_mode_describes_the_scene_instead_of_an_image(text_set):
    out, summary = text_set
    assert not (out / "images").exists() and summary["files"]["images"] is None
    rows = _read(out / "train.jsonl")
    for row in rows:
        assert "image" not in row
        first = row["conversations"][0]["value"]
        assert first.startswith("Scene: ") and "<image>" not in first
        for o in row["scene"]["objects"]:
            assert f"a {o['size']} {o['color']} {o['shape']} at column {o['col']}, row {o['row']}" in first
        assert sum(t["value"].endswith(TEXT_CAPTION_PROMPT) for t in row["conversations"]) == 1
    for row in _read(out / "test_vqa.jsonl"):
        assert "image" not in row and row["context"].startswith("Scene: ")
        assert set(row["answers"]) == oracle(row["question"], row["scene"]["objects"])
    (vqa,) = load_vqa_eval(out / "test_vqa.jsonl")[:1]
    assert vqa.images == [] and vqa.messages[0]["content"].startswith("Scene: ")
    assert vqa.messages[0]["content"].endswith("\n" + vqa.meta["question"])
    caption = load_caption_eval(out / "test_caption.jsonl")[0]
    assert caption.messages[0]["content"].startswith("Scene: ") and caption.meta["prompt"] == TEXT_CAPTION_PROMPT
    assert all(not r.images and r.has_response for r in load_records(out / "train.jsonl"))


def test_turns_per_record_and_test_questions_are_configurable(tmp_path):
    summary = generate_shapes(tmp_path, n_train=10, n_test=4, seed=0, qa_turns=5, caption_turn=False,
                              questions_per_test_image=3)
    rows = _read(tmp_path / "train.jsonl")
    assert all(len(r["conversations"]) == 10 for r in rows)
    assert not any(t["value"] == CAPTION_PROMPT for r in rows for t in r["conversations"])
    assert summary["counts"]["test_questions"] == 12


@pytest.mark.parametrize("bad", [dict(n_train=-1), dict(image_size=8), dict(qa_turns=-2), dict(max_objects=9)])
def test_bad_arguments_are_named(tmp_path, bad):
    kwargs = {"n_train": 2, "n_test": 1, **bad}
    with pytest.raises(ValueError, match="|".join(bad)):
        generate_shapes(tmp_path, **kwargs)
