"""``taid-vlm data shapes``: the embedded offline data set of synthetic scenes.

Writes, under ``out_dir``:
  images/           one PNG per scene (not in text mode)
  train.jsonl       LLaVA conversations: a few QA turns and one caption turn per scene
  test_vqa.jsonl    ``id, image|context, question, answers, family, scene`` (answers = all valid)
  test_caption.jsonl ``id, image|context, references (5), prompt, scene``
  summary.json      configuration, counts, and the majority-answer baseline per family

In text mode (``text=True``) the scene is described in the user prompt instead of shown, so
a text-only teacher/student pair can be trained on the same task. The same seed gives the same
bytes; test scenes never repeat a training scene.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .captions import caption_references
from ...data.errors import DataError
from ...files import write_text_atomically
from ...data.jsonl import dumps, write_jsonl
from ...data.prompts import CAPTION_PROMPT, TEXT_CAPTION_PROMPT, VQA_SUFFIX
from .questions import FAMILIES, MULTI_ANSWER_FAMILIES, AnswerBalancer, Question, ask
from ...data.records import IMAGE_PLACEHOLDER
from .scenes import Scene, describe_scene, render_scene, sample_scene, scene_key

GENERATOR_VERSION = "shapes-v1"


def generate_shapes(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    image_size: int = 64,
    text: bool = False,
    *,
    grid: int = 8,
    min_objects: int = 2,
    max_objects: int = 6,
    qa_turns: int = 3,
    caption_turn: bool = True,
    questions_per_test_image: int = len(FAMILIES),
    n_references: int = 5,
) -> dict[str, Any]:
    """Write the data set and return its summary (also written to ``out_dir/summary.json``)."""
    _check_arguments(n_train, n_test, image_size, grid, qa_turns, questions_per_test_image)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not text:
        (out / "images").mkdir(exist_ok=True)
    writer = _SceneWriter(out, text)
    scene_args = (image_size, grid, min_objects, max_objects)

    train_rng = random.Random(f"taid-shapes:{seed}:train")
    train_balancer, train_keys, train_rows = AnswerBalancer(), set(), []
    for i in range(n_train):
        scene = sample_scene(train_rng, *scene_args)
        train_keys.add(scene_key(scene))
        visual = writer.visual(f"train-{i:05d}", scene, train_rng)
        train_rows.append(_train_row(f"shapes-train-{i:05d}", scene, visual, train_rng, train_balancer,
                                     qa_turns, caption_turn, n_references, text))

    # A separate stream: the test set does not change when n_train does (only its scenes that
    # collide with a training scene are redrawn).
    test_rng = random.Random(f"taid-shapes:{seed}:test")
    test_balancer, vqa_rows, caption_rows = AnswerBalancer(), [], []
    for i in range(n_test):
        scene = _unseen_scene(test_rng, train_keys, *scene_args)
        visual = writer.visual(f"test-{i:05d}", scene, test_rng)
        vqa_rows += _test_vqa_rows(f"shapes-test-{i:05d}", i, scene, visual, test_rng, test_balancer,
                                   questions_per_test_image)
        caption_rows.append({
            "id": f"shapes-test-{i:05d}", **visual, "scene": scene,
            "references": caption_references(scene, test_rng, n_references),
            "prompt": TEXT_CAPTION_PROMPT if text else CAPTION_PROMPT,
        })

    write_jsonl(out / "train.jsonl", train_rows)
    write_jsonl(out / "test_vqa.jsonl", vqa_rows)
    write_jsonl(out / "test_caption.jsonl", caption_rows)
    config = {
        "seed": seed, "n_train": n_train, "n_test": n_test, "image_size": image_size, "text": text,
        "grid": grid, "min_objects": min_objects, "max_objects": max_objects, "qa_turns": qa_turns,
        "caption_turn": caption_turn, "questions_per_test_image": questions_per_test_image,
        "n_references": n_references,
    }
    summary = _summary(config, train_rows, vqa_rows, caption_rows)
    write_text_atomically(out / "summary.json", dumps(summary) + "\n")
    return summary


def _check_arguments(n_train: int, n_test: int, image_size: int, grid: int, qa_turns: int, per_image: int) -> None:
    for name, value, low in (("n_train", n_train, 0), ("n_test", n_test, 0), ("image_size", image_size, 16),
                             ("grid", grid, 2), ("qa_turns", qa_turns, 0), ("questions_per_test_image", per_image, 1)):
        if not isinstance(value, int) or value < low:
            raise DataError(f"argument {name}", f"must be an integer >= {low}, got {value!r}", f"pass {name} >= {low}")


SHAPES_FILES = ("train.jsonl", "test_vqa.jsonl", "test_caption.jsonl", "summary.json", "images")


def refuse_to_replace(out_dir: str | Path) -> None:
    """``data shapes`` never replaces a data set silently: existing outputs need ``--overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(str(out), "is a file, not a folder", "choose a folder for --out")
    present = [name for name in SHAPES_FILES if (out / name).exists()]
    if present:
        raise DataError(str(out), f"already holds {', '.join(present)}",
                        "choose an empty folder, or pass --overwrite to replace them")


class _SceneWriter:
    """What stands for the scene in a row: a saved image path, or a text description."""

    def __init__(self, out: Path, text: bool):
        self.out, self.text = out, text

    def visual(self, name: str, scene: Scene, rng: random.Random) -> dict[str, str]:
        if self.text:
            return {"context": describe_scene(scene, rng)}
        relative = f"images/{name}.png"
        render_scene(scene).save(self.out / relative, format="PNG")
        return {"image": relative}


def _unseen_scene(rng: random.Random, seen: set, *args: int) -> Scene:
    for _ in range(10_000):
        scene = sample_scene(rng, *args)
        if scene_key(scene) not in seen:
            return scene
    raise RuntimeError("could not draw a test scene unlike every training scene; "
                       "use fewer training scenes, more objects or a larger grid")


def _train_row(record_id: str, scene: Scene, visual: dict[str, str], rng: random.Random, balancer: AnswerBalancer,
               qa_turns: int, caption_turn: bool, n_references: int, text: bool) -> dict[str, Any]:
    questions = _distinct_questions(scene, rng, balancer, qa_turns)
    turns = [(q.text + VQA_SUFFIX, rng.choice(q.answers)) for q in questions]
    if caption_turn:
        caption = rng.choice(caption_references(scene, rng, n_references))
        turns.insert(rng.randint(0, len(turns)), (TEXT_CAPTION_PROMPT if text else CAPTION_PROMPT, caption))
    lead = visual.get("context", IMAGE_PLACEHOLDER)
    conversations = []
    for i, (prompt, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": f"{lead}\n{prompt}" if i == 0 else prompt})
        conversations.append({"from": "gpt", "value": answer})
    row = {"id": record_id, "conversations": conversations, "scene": scene,
           "families": [q.family for q in questions]}
    return {**row, **({} if text else {"image": visual["image"]})}


def _distinct_questions(scene: Scene, rng: random.Random, balancer: AnswerBalancer, n: int) -> list[Question]:
    """``n`` questions from families in random order (cycling if n > #families), no repeats."""
    order = list(FAMILIES)
    rng.shuffle(order)
    out, texts = [], set()
    for family in (order * (n // len(order) + 2))[: n + len(order)]:
        if len(out) == n:
            break
        q = ask(family, scene, rng, balancer)
        if q is not None and q.text not in texts:
            out.append(q)
            texts.add(q.text)
    return out


def _test_vqa_rows(prefix: str, index: int, scene: Scene, visual: dict[str, str], rng: random.Random,
                   balancer: AnswerBalancer, per_image: int) -> list[dict[str, Any]]:
    """Families rotate across images, so every family gets about the same number of questions."""
    rows, texts = [], set()
    for j in range(per_image):
        family = FAMILIES[(index * per_image + j) % len(FAMILIES)]
        q = ask(family, scene, rng, balancer)
        if q is None or q.text in texts:
            continue
        texts.add(q.text)
        rows.append({"id": f"{prefix}-q{j:02d}", **visual, "question": q.text, "answers": list(q.answers),
                     "family": family, "scene": scene})
    return rows


def majority_baselines(vqa_rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per family: the answer valid for most questions, and the accuracy of always giving it."""
    by_family: dict[str, Counter] = defaultdict(Counter)
    sizes: Counter = Counter()
    for row in vqa_rows:
        sizes[row["family"]] += 1
        by_family[row["family"]].update(set(row["answers"]))
    out = {}
    for family in sorted(sizes):
        answer, hits = min(by_family[family].items(), key=lambda kv: (-kv[1], kv[0]))
        out[family] = {
            "n": sizes[family], "majority_answer": answer, "majority_baseline": round(hits / sizes[family], 4),
            "answers": dict(sorted(by_family[family].items())), "multi_answer": family in MULTI_ANSWER_FAMILIES,
        }
    return out


def _summary(config: dict, train_rows: list, vqa_rows: list, caption_rows: list) -> dict[str, Any]:
    families = majority_baselines(vqa_rows)
    n_questions = len(vqa_rows)
    overall = sum(f["majority_baseline"] * f["n"] for f in families.values()) / n_questions if n_questions else 0.0
    train_families = Counter(f for row in train_rows for f in row["families"])
    return {
        "generator": GENERATOR_VERSION,
        "config": config,
        "files": {"train": "train.jsonl", "test_vqa": "test_vqa.jsonl", "test_caption": "test_caption.jsonl",
                  "images": None if config["text"] else "images"},
        "counts": {
            "train_records": len(train_rows),
            "train_turns": sum(len(row["conversations"]) // 2 for row in train_rows),
            "train_questions_per_family": dict(sorted(train_families.items())),
            "test_questions": n_questions,
            "test_captions": len(caption_rows),
        },
        "families": families,
        "majority_baseline": round(overall, 4),
        "prompts": {"vqa_suffix": VQA_SUFFIX,
                    "caption": TEXT_CAPTION_PROMPT if config["text"] else CAPTION_PROMPT},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A short table for the terminal: what was written, and what guessing would score."""
    c = summary["counts"]
    lines = [
        f"train records {c['train_records']} ({c['train_turns']} turns), test questions {c['test_questions']}, "
        f"test captions {c['test_captions']}",
        f"{'family':<14} {'n':>6}  {'majority':<9} {'baseline':>8}",
    ]
    for family, f in summary["families"].items():
        lines.append(f"{family:<14} {f['n']:>6}  {f['majority_answer']:<9} {f['majority_baseline']:>8.3f}")
    lines.append(f"{'overall':<14} {c['test_questions']:>6}  {'':<9} {summary['majority_baseline']:>8.3f}")
    return "\n".join(lines)
