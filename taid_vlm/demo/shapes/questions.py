"""Question families over a scene, each with one-word answers computed from the scene.

Each family enumerates every question it could ask about a scene with its answer(s); an
``AnswerBalancer`` then picks the least-used answer so far and a question with that answer.
Choosing the answer first is what keeps the majority baseline near 1/#answers: without it,
"no" would dominate exists questions and small numbers would dominate counts.

Two families have several valid answers (any_color, any_relate: name the colour of any
object matching a filter or a relation): a training record samples one, the test file lists
all. That makes the teacher's output distribution multimodal, which is where forward KL,
reverse KL and TAID behave differently.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable

from .scenes import COLORS, SHAPES, SIZES, Scene

ATTRIBUTES = ("size", "color", "shape")  # English adjective order in noun phrases
VALUES = {"size": SIZES, "color": tuple(COLORS), "shape": SHAPES}
RELATIONS = ("left of", "right of", "above", "below")
FAMILIES = (
    "query_color", "query_shape", "query_size", "count", "exist", "compare_count",
    "relate", "relate_count", "any_color", "any_relate",
)
MULTI_ANSWER_FAMILIES = ("any_color", "any_relate")

Filter = tuple[tuple[str, str], ...]  # ((attribute, value), ...) in ATTRIBUTES order


@dataclass(frozen=True)
class Question:
    family: str
    text: str
    answers: tuple[str, ...]  # every valid answer, sorted


@dataclass(frozen=True, eq=False)
class _Candidate:  # hashed by identity: two candidates may share answers and text
    answers: tuple[str, ...]
    text: Callable[[random.Random], str]  # rendered only for the chosen candidate


class AnswerBalancer:
    """Counts answers per family and steers each new question to the least-used answer."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def choose(self, family: str, candidates: list[_Candidate], rng: random.Random) -> _Candidate:
        used = self.counts[family]
        if family in MULTI_ANSWER_FAMILIES:
            # Several answers are valid: favour sets whose most-used member is used least, so no
            # single answer is valid for most questions (that would be a free majority guess).
            score = {c: max(used[a] for a in c.answers) for c in candidates}
            least = min(score.values())
            chosen = rng.choice([c for c in candidates if score[c] == least])
            used.update(chosen.answers)
            return chosen
        groups: dict[str, list[_Candidate]] = defaultdict(list)
        for c in candidates:
            groups[c.answers[0]].append(c)
        least = min(used[k] for k in groups)
        chosen = rng.choice(groups[rng.choice(sorted(k for k in groups if used[k] == least))])
        used[chosen.answers[0]] += 1
        return chosen


def ask(family: str, scene: Scene, rng: random.Random, balancer: AnswerBalancer) -> Question | None:
    """One question of ``family`` about ``scene``, or None when the scene allows none."""
    candidates = _FAMILIES[family](scene["objects"])
    if not candidates:
        return None
    chosen = balancer.choose(family, candidates, rng)
    return Question(family, chosen.text(rng), chosen.answers)


# ----------------------------------------------------------------------------- phrases


def matches(obj: dict, flt: Filter) -> bool:
    return all(obj[attr] == value for attr, value in flt)


def count(objects: list[dict], flt: Filter) -> int:
    return sum(matches(o, flt) for o in objects)


def singular(flt: Filter) -> str:
    attrs = dict(flt)
    words = [attrs[a] for a in ("size", "color") if a in attrs] + [attrs.get("shape", "object")]
    return " ".join(words)


def plural(flt: Filter) -> str:
    return singular(flt) + "s"


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _filters(attrs: tuple[str, ...]) -> list[Filter]:
    return [tuple(zip(attrs, values)) for values in itertools.product(*(VALUES[a] for a in attrs))]


_SUBSETS = [s for k in (1, 2, 3) for s in itertools.combinations(ATTRIBUTES, k)]
ALL_FILTERS: list[Filter] = [f for s in _SUBSETS for f in _filters(s)]


def unique_descriptions(obj: dict, objects: list[dict], exclude: str | None = None) -> list[Filter]:
    """Every attribute subset (without ``exclude``) that picks out ``obj`` and nothing else."""
    out = []
    for subset in _SUBSETS:
        if exclude in subset:
            continue
        flt = tuple((a, obj[a]) for a in subset)
        if count(objects, flt) == 1:
            out.append(flt)
    return out


def _the(descriptions: list[Filter]) -> Callable[[random.Random], str]:
    return lambda rng: "the " + singular(rng.choice(descriptions))


def related(a: dict, b: dict, relation: str) -> bool:
    """Whether ``a`` is ``relation`` ``b``; rows grow downwards, so above means a smaller row."""
    if relation == "left of":
        return a["col"] < b["col"]
    if relation == "right of":
        return a["col"] > b["col"]
    if relation == "above":
        return a["row"] < b["row"]
    if relation == "below":
        return a["row"] > b["row"]
    raise ValueError(f"unknown relation {relation!r}")


# ----------------------------------------------------------------------------- families


def _query(attribute: str, template: str) -> Callable[[list[dict]], list[_Candidate]]:
    def family(objects: list[dict]) -> list[_Candidate]:
        out = []
        for obj in objects:
            descriptions = unique_descriptions(obj, objects, exclude=attribute)
            if descriptions:
                the = _the(descriptions)
                out.append(_Candidate((obj[attribute],), lambda rng, the=the: template.format(the(rng))))
        return out

    return family


def _filter_counts(objects: list[dict]) -> Counter:
    """How many objects every filter matches (absent filters count 0), in one pass."""
    return Counter(tuple((a, o[a]) for a in subset) for o in objects for subset in _SUBSETS)


def _count(objects: list[dict]) -> list[_Candidate]:
    counts = _filter_counts(objects)
    counts[()] = len(objects)
    return [_Candidate((str(counts[f]),), lambda rng, f=f: f"How many {plural(f)} are there?")
            for f in [()] + ALL_FILTERS]


def _exist(objects: list[dict]) -> list[_Candidate]:
    counts = _filter_counts(objects)
    return [_Candidate(("yes" if counts[f] else "no",),
                       lambda rng, f=f: f"Is there {with_article(singular(f))}?") for f in ALL_FILTERS]


def _compare_count(objects: list[dict]) -> list[_Candidate]:
    counts, out = _filter_counts(objects), []
    for attr in ATTRIBUTES:
        for a, b in itertools.permutations(_filters((attr,)), 2):
            na, nb = counts[a], counts[b]
            if na + nb:
                out.append(_Candidate(("yes" if na > nb else "no",),
                                      lambda rng, a=a, b=b: f"Are there more {plural(a)} than {plural(b)}?"))
    return out


def _describable(objects: list[dict]) -> list[tuple[dict, Callable[[random.Random], str]]]:
    return [(o, _the(d)) for o in objects if (d := unique_descriptions(o, objects))]


def _relate(objects: list[dict]) -> list[_Candidate]:
    out = []
    for (a, the_a), (b, the_b) in itertools.permutations(_describable(objects), 2):
        horizontal = "left" if a["col"] < b["col"] else "right"
        vertical = "above" if a["row"] < b["row"] else "below"
        out.append(_Candidate((horizontal,), lambda rng, x=the_a, y=the_b: f"Is {x(rng)} left or right of {y(rng)}?"))
        out.append(_Candidate((vertical,), lambda rng, x=the_a, y=the_b: f"Is {x(rng)} above or below {y(rng)}?"))
    return out


_TARGETS: list[Filter] = [()] + _filters(("color",)) + _filters(("shape",))


def _relate_count(objects: list[dict]) -> list[_Candidate]:
    out = []
    for anchor, the in _describable(objects):
        for relation in RELATIONS:
            for f in _TARGETS:
                n = sum(matches(o, f) and related(o, anchor, relation) for o in objects)
                out.append(_Candidate(
                    (str(n),), lambda rng, f=f, r=relation, the=the: f"How many {plural(f)} are {r} {the(rng)}?"))
    return out


def _prefer_several(candidates: list[_Candidate]) -> list[_Candidate]:
    several = [c for c in candidates if len(c.answers) > 1]
    return several or candidates


def _any_color(objects: list[dict]) -> list[_Candidate]:
    out = []
    for f in _filters(("shape",)) + _filters(("size",)):
        colors = tuple(sorted({o["color"] for o in objects if matches(o, f)}))
        if colors:
            out.append(_Candidate(colors, lambda rng, f=f: f"Name the color of any {singular(f)}."))
    return _prefer_several(out)


def _any_relate(objects: list[dict]) -> list[_Candidate]:
    out = []
    for anchor, the in _describable(objects):
        for relation in RELATIONS:
            colors = tuple(sorted({o["color"] for o in objects if related(o, anchor, relation)}))
            if colors:
                out.append(_Candidate(
                    colors, lambda rng, r=relation, the=the: f"Name the color of any object {r} {the(rng)}."))
    return _prefer_several(out)


_FAMILIES: dict[str, Callable[[list[dict]], list[_Candidate]]] = {
    "query_color": _query("color", "What color is {}?"),
    "query_shape": _query("shape", "What shape is {}?"),
    "query_size": _query("size", "What size is {}?"),
    "count": _count,
    "exist": _exist,
    "compare_count": _compare_count,
    "relate": _relate,
    "relate_count": _relate_count,
    "any_color": _any_color,
    "any_relate": _any_relate,
}
assert tuple(_FAMILIES) == FAMILIES
