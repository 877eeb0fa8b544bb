"""Five paraphrased reference captions per scene.

CIDEr and BLEU reward agreement with a consensus of references, so the five differ the way
human captions do: in the order objects are listed, in wording, and in how much detail they
give (with or without sizes), while all staying true to the scene.
"""

from __future__ import annotations

import random
from collections import Counter

from .questions import with_article
from .scenes import Scene

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# (template, forced order or None); {n} is the object count in words, {items} the listed objects.
TEMPLATES = (
    ("{Items}.", None),
    ("There are {n} shapes: {items}.", None),
    ("{N} objects: {items}.", None),
    ("A scene with {items}.", None),
    ("From left to right: {items}.", "left_to_right"),
    ("From top to bottom: {items}.", "top_to_bottom"),
    ("{N} shapes, {items}.", None),
)
ORDERS = ("left_to_right", "top_to_bottom", "large_first", "random")


def caption_references(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """``n`` distinct true captions of ``scene`` (``n`` <= number of templates)."""
    if not 1 <= n <= len(TEMPLATES):
        raise ValueError(f"n must be in 1..{len(TEMPLATES)}, got {n}")
    out = []
    for template, forced in rng.sample(TEMPLATES, n):
        order = forced or rng.choice(ORDERS)
        with_size = rng.random() < 0.6
        items = _join(_phrases(_ordered(scene["objects"], order, rng), with_size))
        count = len(scene["objects"])
        text = template.format(
            items=items, Items=items[0].upper() + items[1:],
            n=NUMBER_WORDS[count], N=NUMBER_WORDS[count].capitalize(),
        )
        out.append(text)
    return out


def _ordered(objects: list[dict], order: str, rng: random.Random) -> list[dict]:
    if order == "left_to_right":
        return sorted(objects, key=lambda o: o["col"])
    if order == "top_to_bottom":
        return sorted(objects, key=lambda o: o["row"])
    if order == "large_first":
        return sorted(objects, key=lambda o: (o["size"] != "large", o["col"]))
    shuffled = list(objects)
    rng.shuffle(shuffled)
    return shuffled


def _phrases(objects: list[dict], with_size: bool) -> list[str]:
    """Noun phrases in order, identical ones merged at their first place ("two red circles")."""
    words = [" ".join(([o["size"]] if with_size else []) + [o["color"], o["shape"]]) for o in objects]
    counts = Counter(words)
    out, seen = [], set()
    for w in words:
        if w in seen:
            continue
        seen.add(w)
        out.append(with_article(w) if counts[w] == 1 else f"{NUMBER_WORDS[counts[w]]} {w}s")
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
