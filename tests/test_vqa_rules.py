"""The two VQA rule sets reproduce their reference scorers, quirks included (docs/EVALUATION.md).

``official``: GT-Vision-Lab VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py.
``lmms-eval``: lmms-eval's lmms_eval/tasks/vqav2/utils.py (vqav2_process_results).
Each expected value below was worked out by hand from those scripts' code paths.
"""

from __future__ import annotations

import argparse
import json

import pytest

from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.eval.command import add_eval_parser, run_eval
from taid_vlm.eval.vqa_metrics import (
    DEFAULT_VQA_RULES,
    PERIOD_STRIP_LIMIT,
    VQA_RULES,
    VQASample,
    normalize_answer,
    process_punctuation,
    score_vqa_samples,
    vqa_score,
)
from taid_vlm.testing.tiny import save_tiny

BOTH = pytest.mark.parametrize("rules", VQA_RULES)


def test_the_rule_sets_and_the_default():
    assert VQA_RULES == ("official", "lmms-eval")
    assert DEFAULT_VQA_RULES == "official"
    with pytest.raises(ValueError, match="not one of"):
        vqa_score("yes", ["yes"] * 10, rules="vqav2")


# ---- quirk 1: identical human answers switch normalisation off (official only) -------------------------


@pytest.mark.parametrize("prediction, answers, official, lmms", [
    ("Yes", ["yes"] * 10, 0.0, 1.0),           # raw "Yes" != raw "yes"
    ("yes.", ["yes"] * 10, 0.0, 1.0),          # the period is not stripped either
    ("t-shirt", ["t-shirt"] * 10, 1.0, 1.0),   # raw equals raw; lmms-eval: "t shirt" == "t shirt"
    ("t shirt", ["t-shirt"] * 10, 0.0, 1.0),
    ("Yes", ["yes"] * 9 + ["no"], 1.0, 1.0),   # one differing answer: both sides normalised
    ("two", ["2"] * 10, 0.0, 1.0),             # number words are not mapped either
])  # fmt: skip
def test_identical_answers_skip_normalisation_only_under_official(prediction, answers, official, lmms):
    assert vqa_score(prediction, answers, rules="official") == official
    assert vqa_score(prediction, answers, rules="lmms-eval") == lmms


# ---- quirk 2: a prediction that normalises to nothing is still scored by the formula -----------------


@BOTH
def test_a_prediction_normalising_to_empty_is_scored_by_the_formula(rules):
    # "the" -> "", and four humans typed only an article: each leave-one-out subset still
    # holds >= 3 matching answers, so the formula gives full credit
    assert vqa_score("the", ["a"] * 4 + ["red"] * 6, rules=rules) == 1.0
    assert vqa_score("?", ["an"] * 2 + ["red"] * 8, rules=rules) == pytest.approx(0.6)
    assert vqa_score("the", ["red"] * 5 + ["blue"] * 5, rules=rules) == 0.0
    assert vqa_score(None, ["a"] * 4 + ["red"] * 6, rules=rules) == 0.0  # nothing generated at all


# ---- quirk 3: re.UNICODE passed as sub's count: at most 32 periods go --------------------------------


@BOTH
def test_the_period_strip_stops_after_32_periods(rules):
    assert PERIOD_STRIP_LIMIT == 32
    answers = ["yes"] * 9 + ["no"]
    assert vqa_score("yes" + "." * 32, answers, rules=rules) == 1.0
    assert vqa_score("yes" + "." * 33, answers, rules=rules) == 0.0
    assert process_punctuation("a" + "." * 40, rules) == "a" + "." * 8
    assert process_punctuation("3.5.", rules) == "3.5"  # a period before a digit stays


# ---- lmms-eval's own differences -------------------------------------------------------------------------


def test_lmms_eval_treats_repeated_commas_between_digits_as_a_number():
    answers = ["1000"] * 9 + ["10"]
    # lmms-eval's comma test is (?<=\d),+(?=\d): "1,,000" switches every mark to "delete"
    assert normalize_answer("1,,000", "lmms-eval") == "1000"
    assert vqa_score("1,,000", answers, rules="lmms-eval") == 1.0
    # the official one is \d,\d: no match, so the commas become spaces
    assert normalize_answer("1,,000", "official") == "1 000"
    assert vqa_score("1,,000", answers, rules="official") == 0.0
    assert normalize_answer("1,000", "official") == normalize_answer("1,000", "lmms-eval") == "1000"


@BOTH
def test_shared_behaviour_leave_one_out_and_punctuation(rules):
    assert vqa_score("Dog", ["dog"] * 2 + ["cat"] * 8, rules=rules) == pytest.approx(0.6)
    assert vqa_score("red, white", ["red white"] * 3 + ["blue"] * 7, rules=rules) == pytest.approx(0.9)
    assert vqa_score("x-ray", ["x ray"] * 4 + ["xray"] * 6, rules=rules) == 1.0
    assert vqa_score("dont", ["don't"] * 4 + ["no"] * 6, rules=rules) == 1.0


@BOTH
def test_answer_sets_that_are_not_ten_human_answers_are_any_match(rules):
    assert vqa_score("Two.", ["2"], rules=rules) == 1.0
    assert vqa_score("the", ["a"], rules=rules) == 0.0  # an empty answer never matches a set
    assert vqa_score("cube", ["sphere", "cube"], rules=rules) == 1.0


def test_summaries_name_the_rules():
    samples = [VQASample("q1", "Yes", ["yes"] * 10), VQASample("q2", "no", ["no"])]
    official = score_vqa_samples(samples, rules="official")
    lmms = score_vqa_samples(samples, rules="lmms-eval")
    assert (official.scores, lmms.scores) == ([0.0, 1.0], [1.0, 1.0])
    assert official.summary["vqa_rules"] == "official" and lmms.summary["vqa_rules"] == "lmms-eval"
    assert official.summary["normalizer_version"].startswith("vqav2-official/")
    assert lmms.summary["normalizer_version"].startswith("vqav2-lmms-eval/")


# ---- the command line --------------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="taid-vlm")
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def test_eval_vqa_rules_flag_reaches_results_json(tmp_path, capsys):
    data = tmp_path / "data"
    generate_shapes(data, 4, 2, seed=0, image_size=32, text=True)
    model = save_tiny("qwen2", tmp_path / "qwen")
    for rules in (None, "lmms-eval"):
        out = tmp_path / f"out-{rules}"
        argv = ["--model", str(model), "--data", str(data / "test_vqa.jsonl"), "--task", "vqa", "--output", str(out),
                "--limit", "2", "--max-new-tokens", "2", "--quiet"]
        assert run_eval(_parse(argv + ([] if rules is None else ["--vqa-rules", rules]))) == 0
        results = json.loads((out / "results.json").read_text())
        expected = rules or "official"
        assert results["meta"]["vqa_rules"] == expected
        (entry,) = results["models"].values()
        assert entry["metrics"]["vqa_rules"] == expected
        assert entry["normalizer_version"].startswith(f"vqav2-{expected}/")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _parse(["--model", "m", "--data", "d", "--task", "vqa", "--output", "o", "--vqa-rules", "vqav2"])
