"""VQA accuracy under the rules of a named reference scorer (docs/EVALUATION.md, "VQA rules").

Published VQAv2 / OK-VQA / VizWiz numbers come from one of two scripts whose quirks change
scores, so a number is only comparable if the same script's quirks are reproduced, not fixed:

- ``official``: GT-Vision-Lab's ``vqaEval.py`` (PythonEvaluationTools), the script behind the
  VQA evaluation server. When all human answers are identical it normalises NEITHER side
  (``Yes`` vs ten ``yes`` scores 0, ``t-shirt`` vs ten ``t-shirt`` scores 1); a prediction
  that normalises to the empty string is still scored by the agreement formula; its period
  strip removes at most 32 periods because ``re.UNICODE`` (= 32) lands in ``sub``'s ``count``.
- ``lmms-eval``: lmms-eval's VQAv2 ``process_results`` (what many papers' local numbers come
  from). It always normalises both sides, and its digit-comma test accepts ``1,,000``; the
  same 32-period limit applies.

Both keep the official contractions table with its odd entries (capitalised keys that can
never fire after lower-casing, the reversed ``somebody'd`` entry), and both let a digit,digit
pattern anywhere in the text switch every punctuation mark from "replace by a space" to "delete".

Bump ``NORMALIZER_VERSION`` whenever anything here changes what a prediction scores.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

NORMALIZER_VERSION = "taid-vlm-2"

VQA_RULES = ("official", "lmms-eval")
DEFAULT_VQA_RULES = "official"  # the evaluation server's rules: why, in docs/EVALUATION.md

# Apostrophe-less spellings people (and models) type, mapped to the contraction the
# annotations use. Looked up per word after lower-casing, like the official table.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")

_DIGIT_COMMA_DIGIT = {"official": re.compile(r"\d,\d"), "lmms-eval": re.compile(r"(?<=\d),+(?=\d)")}
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# Both references call ``periodStrip.sub("", text, re.UNICODE)``: the flag lands in ``count``.
PERIOD_STRIP_LIMIT = int(re.UNICODE)
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")

ANSWER_TYPES = ("yes/no", "number", "other")
UNSPECIFIED_GROUP = "(unspecified)"


def check_rules(rules: str) -> str:
    if rules not in VQA_RULES:
        raise ValueError(f"VQA rules {rules!r} are not one of {', '.join(VQA_RULES)}")
    return rules


def clean_whitespace(text: str) -> str:
    """Step 1 of both reference scripts: newlines and tabs become spaces, ends are stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str, rules: str = DEFAULT_VQA_RULES) -> str:
    """Delete or blank out punctuation the way the reference script decides, mark by mark.

    A mark is deleted when it touches a space (``red, white``) or when the text holds a
    digit,digit pattern anywhere (``1,000``); otherwise it becomes a space (``x-ray``).
    Periods go unless a digit follows (``2.`` -> ``2``, ``3.5`` stays), at most 32 of them.
    """
    has_digit_comma = _DIGIT_COMMA_DIGIT[check_rules(rules)].search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The test looks at the original text, the replacement acts on the running result.
        if has_digit_comma or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=PERIOD_STRIP_LIMIT)


def process_words(text: str) -> str:
    """Lower-case, spell numbers as digits, drop articles, restore contractions, one space.
    (Both references use the same tables; verified entry by entry.)"""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str, rules: str = DEFAULT_VQA_RULES) -> str:
    """The full normalisation of one answer string under ``rules``."""
    return process_words(process_punctuation(clean_whitespace(text), rules))


def is_empty_prediction(prediction: str | None, rules: str = DEFAULT_VQA_RULES) -> bool:
    """A missing/unparsable generation, or one with nothing left after normalisation."""
    return prediction is None or normalize_answer(prediction, rules) == ""


HUMAN_ANSWERS = 10  # VQAv2 collects ten human answers per question


def vqa_score(prediction: str | None, answers: Sequence[str], rules: str = DEFAULT_VQA_RULES) -> float:
    """Accuracy of one prediction in [0, 1] under ``rules`` (``official`` or ``lmms-eval``).

    With exactly 10 human answers (the VQAv2 / OK-VQA / VizWiz convention) this is the
    reference script's computation, quirks included: for each answer, count how many of the
    OTHER 9 equal the prediction, take min(1, count/3), and average over the 10 leave-one-out
    subsets (1, 2, 3 matching humans give 0.3, 0.6, 0.9). Any other number of answers is a SET
    of valid answers (GQA-style single references, our synthetic multi-answer families), where
    the leave-one-out formula is meaningless (a single reference could never be matched):
    normalised exact match against any of them, an empty prediction scoring 0. A missing
    prediction (None: nothing was generated) scores 0 under every rule.
    """
    check_rules(rules)
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}")
    if prediction is None:
        return 0.0
    if len(answers) != HUMAN_ANSWERS:
        pred = normalize_answer(prediction, rules)
        return float(pred != "" and any(pred == normalize_answer(a, rules) for a in answers))
    pred = clean_whitespace(prediction)
    humans = [clean_whitespace(a) for a in answers]
    if rules == "lmms-eval" or len(set(humans)) > 1:  # official: identical lists normalise neither side
        humans = [process_words(process_punctuation(a, rules)) for a in humans]
        pred = process_words(process_punctuation(pred, rules))
    matches = sum(h == pred for h in humans)
    total = 0.0
    for h in humans:
        others_matching = matches - (h == pred)
        total += min(1.0, others_matching / 3.0)
    return total / len(humans)


def normalizer_version(rules: str = DEFAULT_VQA_RULES) -> str:
    """What a results file records: the rule set and this module's version of it."""
    return f"vqav2-{check_rules(rules)}/{NORMALIZER_VERSION}"


def answer_type(answers: Sequence[str]) -> str:
    """yes/no, number or other, judged from the most common normalised human answer.

    VQAv2 ships an annotated answer type; this derives one for sets that do not (ties go to
    the answer seen first).
    """
    if isinstance(answers, str) or not answers:
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}")
    top = Counter(normalize_answer(a) for a in answers).most_common(1)[0][0]
    if top in ("yes", "no"):
        return "yes/no"
    if _NUMBER.match(top):
        return "number"
    return "other"


@dataclass
class VQASample:
    """One question to score. ``answer_type`` overrides the derived one when the data has it;
    ``meta`` carries grouping keys such as the question family."""

    id: str
    prediction: str | None
    answers: list[str]
    answer_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class VQAResult:
    scores: list[float]  # per sample, in input order, each in [0, 1]
    summary: dict[str, Any]


def _percent(values: Sequence[float]) -> float:
    return round(100.0 * sum(values) / len(values), 2)


def _breakdown(groups: dict[str, list[float]]) -> dict[str, dict[str, float | int]]:
    return {name: {"accuracy": _percent(vals), "n": len(vals)} for name, vals in sorted(groups.items())}


def _check_sample(sample: VQASample) -> None:
    where = f"VQA sample {sample.id!r}"
    if isinstance(sample.answers, str) or not sample.answers:
        raise ValueError(f"{where} has no reference answers; every question needs at least one")
    if sample.prediction is not None and not isinstance(sample.prediction, str):
        raise ValueError(f"{where}: prediction must be a string or None, got {type(sample.prediction).__name__}")
    if sample.answer_type is not None and sample.answer_type not in ANSWER_TYPES:
        raise ValueError(f"{where}: answer_type {sample.answer_type!r} is not one of {ANSWER_TYPES}")


def score_vqa_samples(samples: Iterable[VQASample], group_by: Sequence[str] = ("family",),
                      rules: str = DEFAULT_VQA_RULES) -> VQAResult:
    """Score every sample and summarise: overall accuracy x100 (2 decimals), per answer type
    and per ``meta[key]`` for each key in ``group_by``.

    Nothing is dropped: empty or missing predictions score 0 and are counted in ``n_empty``;
    samples without a grouping key are grouped under ``(unspecified)``.
    """
    check_rules(rules)
    samples = list(samples)
    if not samples:
        raise ValueError("no VQA samples to score; the evaluation set is empty")
    scores: list[float] = []
    by_type: dict[str, list[float]] = defaultdict(list)
    by_key: dict[str, dict[str, list[float]]] = {key: defaultdict(list) for key in group_by}
    n_empty = n_single = 0
    for sample in samples:
        _check_sample(sample)
        score = vqa_score(sample.prediction, sample.answers, rules)
        scores.append(score)
        n_empty += is_empty_prediction(sample.prediction, rules)
        n_single += len(sample.answers) == 1
        by_type[sample.answer_type or answer_type(sample.answers)].append(score)
        for key in group_by:
            by_key[key][str(sample.meta.get(key, UNSPECIFIED_GROUP))].append(score)
    summary: dict[str, Any] = {
        "accuracy": _percent(scores),
        "n": len(scores),
        "n_empty": n_empty,
        "n_single_reference": n_single,
        "by_answer_type": _breakdown(by_type),
        **{f"by_{key}": _breakdown(groups) for key, groups in by_key.items()},
        "vqa_rules": rules,
        "normalizer_version": normalizer_version(rules),
    }
    return VQAResult(scores=scores, summary=summary)
