"""Metrics must reproduce the field's numbers (docs/EVALUATION.md): the VQA normaliser and
leave-one-out accuracy, pycocoevalcap captions (and a fallback that agrees with it), text
metrics, and the three report files."""

from __future__ import annotations

import json
import math
import os

import pytest

from taid_vlm import files
from taid_vlm.eval import caption_metrics, reports, text_metrics
from taid_vlm.eval.caption_metrics import caption_scores, java_available, ptb_like_tokenize
from taid_vlm.eval.vqa_metrics import (
    CONTRACTIONS,
    VQASample,
    answer_type,
    normalize_answer,
    normalizer_version,
    score_vqa_samples,
    vqa_score,
)

needs_java = pytest.mark.skipif(not java_available(), reason="pycocoevalcap needs Java on PATH")

# --------------------------------------------------------------------------- VQA normaliser


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes.", "yes"),
        ("2.", "2"),
        ("3.5", "3.5"),
        ("a dog", "dog"),
        ("Two", "2"),
        ("dont know", "don't know"),
        ("red, white", "red white"),
        ("1,000", "1000"),
        ("x-ray", "x ray"),
        ("none", "0"),
    ],
)
def test_normaliser_matches_evaluation_md_checks(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  The\tDog!\n", "dog"),  # whitespace cleaned, article dropped, '!' next to nothing -> space
        ("left/right", "left right"),  # lone mark inside a word becomes a space
        ("left / right", "left right"),  # a mark touching a space is deleted
        ("1,000 x-ray", "1000 xray"),  # a digit,digit anywhere deletes every mark
        ("Dont", "don't"),  # contractions apply after lower-casing
        ("Im", "im"),  # ...so the official table's capitalised keys never fire
        ("mr. smith", "mr smith"),
        ("an apple", "apple"),
    ],
)
def test_normaliser_official_details(raw, expected):
    assert normalize_answer(raw) == expected


def test_contractions_table_is_the_official_one():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # official quirk kept on purpose
    assert CONTRACTIONS["wouldnt've"] == "wouldn't've"


# --------------------------------------------------------------------------- VQA score


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_vqa_score_k_matching_humans_of_ten(k, expected):
    # exact values of the 10 leave-one-out average: k=1 -> 9*(1/3)/10, k=2 -> (2/3 + 8*2/3)/10 ...
    answers = ["dog"] * k + ["cat"] * (10 - k)
    assert vqa_score("dog", answers) == pytest.approx(expected, abs=1e-12)  # "Dog" vs ten "dog": 0 (official quirk)


def test_vqa_score_with_a_set_of_valid_answers_is_any_match():
    # not 10 human answers: a list of valid answers (multi-answer families), each fully right
    assert vqa_score("Dog", ["dog", "cat", "red"]) == 1.0
    assert vqa_score("cat.", ["dog", "cat", "red"]) == 1.0
    assert vqa_score("cow", ["dog", "cat", "red"]) == 0.0


def test_vqa_score_single_answer_is_normalised_exact_match():
    assert vqa_score("Two.", ["2"]) == 1.0
    assert vqa_score("the red one", ["Red One"]) == 1.0
    assert vqa_score("dog", ["cat"]) == 0.0


def test_vqa_score_normalises_humans_only_when_they_differ():
    assert vqa_score("t-shirt", ["t-shirt"] * 4 + ["shirt"]) == 1.0
    # identical human answers leave BOTH sides raw in the official script (tests/test_vqa_rules.py)
    assert vqa_score("t-shirt", ["t-shirt"] * 10) == 1.0
    assert vqa_score("T-shirt", ["t-shirt"] * 10) == 0.0


@pytest.mark.parametrize("prediction", [None, "", "   ", "the", "\n"])
def test_vqa_empty_predictions_score_zero(prediction):
    assert vqa_score(prediction, ["0"] * 10) == 0.0


def test_vqa_score_rejects_missing_answers():
    with pytest.raises(ValueError, match="answers"):
        vqa_score("dog", [])


@pytest.mark.parametrize(
    "answers, expected",
    [(["Yes", "yes", "no"], "yes/no"), (["two", "2", "3"], "number"), (["3.5"], "number"), (["red", "red", "2"], "other")],
)
def test_answer_type(answers, expected):
    assert answer_type(answers) == expected


def test_score_vqa_samples_summary_counts_empties_and_breaks_down():
    samples = [
        VQASample("q1", "yes", ["yes"], meta={"family": "exist"}),
        VQASample("q2", None, ["no"], meta={"family": "exist"}),
        VQASample("q3", "2", ["two"], meta={"family": "count"}),
        VQASample("q4", "", ["3"], meta={"family": "count"}),
        VQASample("q5", "red", ["red"] * 2 + ["blue"] * 8),  # 0.6, no family
        VQASample("q6", "cube", ["sphere"], answer_type="other", meta={"family": "query"}),
    ]
    result = score_vqa_samples(samples)
    assert result.scores == pytest.approx([1, 0, 1, 0, 0.6, 0])
    s = result.summary
    assert s["accuracy"] == round(100 * 2.6 / 6, 2) == 43.33
    assert (s["n"], s["n_empty"], s["n_single_reference"]) == (6, 2, 5)
    assert s["by_answer_type"] == {
        "number": {"accuracy": 50.0, "n": 2},
        "other": {"accuracy": 30.0, "n": 2},
        "yes/no": {"accuracy": 50.0, "n": 2},
    }
    assert s["by_family"]["count"] == {"accuracy": 50.0, "n": 2}
    assert s["by_family"]["(unspecified)"] == {"accuracy": 60.0, "n": 1}
    assert s["normalizer_version"] == normalizer_version("official")


def test_score_vqa_samples_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        score_vqa_samples([])
    with pytest.raises(ValueError, match="'q9'"):
        score_vqa_samples([VQASample("q9", "a", [])])
    with pytest.raises(ValueError, match="answer_type"):
        score_vqa_samples([VQASample("q1", "a", ["a"], answer_type="colour")])


# --------------------------------------------------------------------------- captions

REFS = {
    "a": ["A dog runs on the green grass.", "A brown dog is running across a lawn.", "The dog plays outside in a park."],
    "b": ["Two cats sleep on a red sofa.", "A pair of cats napping on a couch.", "Cats sleeping on the sofa."],
    "c": ["A man rides a bicycle down the street.", "A person riding a bike on a road.", "A cyclist on a city street."],
    "d": ["A plate of food with broccoli and rice.", "Rice and broccoli on a white plate.", "A meal of rice with vegetables."],
    "e": ["A red car parked near a building.", "A car is parked on the street.", "The red car is next to a tall building."],
}
PREDS = {
    "a": "A dog running on the grass.",
    "b": "Two cats sleeping on a couch.",
    "c": "A man riding a bike on the street.",
    "d": "",  # an empty generation must be scored, not dropped or crashed on
    "e": "A red car parked on the street.",
}
AGREEING_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")
BACKEND_TOLERANCE = 1e-6  # x100 scale; the only gap is pycocoevalcap's 1e-15/1e-9 BLEU smoothing


@pytest.fixture(scope="module")
def coco_run():
    """One pycocoevalcap run (METEOR starts a JVM: ~5 s), recording the Meteor it started."""
    if not java_available():
        pytest.skip("pycocoevalcap needs Java on PATH")
    from pycocoevalcap.meteor import meteor as meteor_module

    started = []

    class RecordingMeteor(meteor_module.Meteor):
        def __init__(self):
            super().__init__()
            started.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(meteor_module, "Meteor", RecordingMeteor)
        scores = caption_scores(PREDS, REFS, backend="pycocoevalcap")
    return scores, started


def test_pycocoevalcap_backend_is_labelled_and_complete(coco_run):
    scores, _ = coco_run
    assert scores["backend"] == "pycocoevalcap" and "java" in scores["tokenizer"]
    assert 0 < scores["METEOR"] < 100
    assert scores["SPICE"] is None and "unavailable offline" in scores["spice_status"]
    assert (scores["n"], scores["n_empty"]) == (5, 1)
    assert scores["per_sample"]["d"] == {"METEOR": 0.0, "ROUGE-L": 0.0, "CIDEr": 0.0}


def test_pycocoevalcap_meteor_process_is_closed(coco_run):
    _, started = coco_run
    assert len(started) == 1
    proc = started[0].meteor_p
    assert proc.poll() is not None, "the METEOR JVM is still running"
    assert proc.stdin.closed and proc.stdout.closed


def test_python_fallback_agrees_with_pycocoevalcap(coco_run):
    reference, _ = coco_run
    fallback = caption_scores(PREDS, REFS, backend="python")
    for metric in AGREEING_METRICS:
        assert fallback[metric] == pytest.approx(reference[metric], abs=BACKEND_TOLERANCE), metric
    for image in REFS:
        for metric in ("ROUGE-L", "CIDEr"):
            got, want = fallback["per_sample"][image][metric], reference["per_sample"][image][metric]
            assert got == pytest.approx(want, abs=BACKEND_TOLERANCE), (image, metric)


def test_python_fallback_is_labelled_and_has_no_meteor():
    scores = caption_scores(PREDS, REFS, backend="python")
    assert scores["backend"] == "python-fallback"
    assert scores["METEOR"] is None and "fallback" in scores["meteor_status"]
    assert scores["SPICE"] is None and scores["spice_status"]
    assert scores["n_empty"] == 1 and scores["per_sample"]["d"]["CIDEr"] == 0.0


def test_auto_backend_falls_back_without_java(monkeypatch):
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    java_available.cache_clear()
    try:
        assert caption_scores(PREDS, REFS)["backend"] == "python-fallback"
        with pytest.raises(RuntimeError, match="Java"):
            caption_scores(PREDS, REFS, backend="pycocoevalcap")
    finally:
        java_available.cache_clear()


def test_perfect_captions_score_100():
    preds = {i: refs[1] for i, refs in REFS.items()}
    scores = caption_scores(preds, REFS, backend="python")
    assert scores["BLEU-1"] == pytest.approx(100.0) and scores["BLEU-4"] == pytest.approx(100.0)
    assert scores["ROUGE-L"] == pytest.approx(100.0)


def test_bleu_by_hand():
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0/1, equal lengths so no brevity penalty
    scores = caption_scores({"x": "a b c d", "y": ""}, {"x": ["a b c e"], "y": ["q"]}, backend="python")
    # the empty 'y' still adds its reference length: brevity exp(1 - 5/4)
    bp = math.exp(1 - 5 / 4)
    assert scores["BLEU-1"] == pytest.approx(100 * bp * 0.75)
    assert scores["BLEU-2"] == pytest.approx(100 * bp * math.sqrt(0.75 * 2 / 3))
    assert scores["BLEU-4"] == 0.0


def test_cider_of_a_single_image_is_zero():
    scores = caption_scores({"x": "a dog"}, {"x": ["a dog"]}, backend="python")
    assert scores["CIDEr"] == 0.0 and scores["BLEU-1"] == pytest.approx(100.0)


def test_caption_inputs_are_checked():
    with pytest.raises(ValueError, match="missing predictions"):
        caption_scores({"a": "x"}, {"a": ["x"], "b": ["y"]}, backend="python")
    with pytest.raises(ValueError, match="'a'"):
        caption_scores({"a": "x"}, {"a": []}, backend="python")
    with pytest.raises(ValueError, match="backend"):
        caption_scores({"a": "x"}, {"a": ["x"]}, backend="java")
    none_pred = caption_scores({"a": None, "b": "a cat"}, {"a": ["a dog"], "b": ["a cat"]}, backend="python")
    assert none_pred["n_empty"] == 1


TOKENIZER_CASES = [
    "A dog's toy is on the mat.",
    "I don't know, can't tell; won't say!",
    "The price is 1,000 dollars or 3.5 euros.",
    'An x-ray of a man (left) and "quoted" text.',
    "Mr. Smith went to the U.S. yesterday...",
    "A cat -- sleeping -- on a bed?",
    "It's 5:30 p.m. and they're here",
    "there is a sign that says 'stop'.",
    "A  woman,\twith an umbrella, walks\nhome.",
]


@needs_java
def test_fallback_tokenizer_matches_stanford_ptb_on_captions():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = PTBTokenizer().tokenize({i: [{"caption": " ".join(s.split())}] for i, s in enumerate(TOKENIZER_CASES)})
    for i, sentence in enumerate(TOKENIZER_CASES):
        assert " ".join(ptb_like_tokenize(sentence)) == java[i][0], sentence


def test_fallback_tokenizer_examples():
    assert ptb_like_tokenize("A man's hat isn't red (left).") == ["a", "man", "'s", "hat", "is", "n't", "red", "-lrb-", "left", "-rrb-"]


# --------------------------------------------------------------------------- text


def test_rouge_l_f1_best_over_references():
    # lcs 3, precision 1, recall 1/2 -> F1 2/3; the second reference is worse
    assert text_metrics.rouge_l("The cat sat", ["the cat sat on the mat", "a dog"]) == pytest.approx(2 / 3)
    assert text_metrics.rouge_l("", ["a"]) == 0.0 and text_metrics.rouge_l(None, ["a"]) == 0.0


def test_exact_match_normalised():
    assert text_metrics.exact_match("The Cat!", ["cat", "dog"]) == 1.0
    assert text_metrics.exact_match("cats", ["cat"]) == 0.0
    assert text_metrics.exact_match("the", ["a"]) == 0.0  # empty after normalisation never matches


def test_perplexity_from_nll():
    assert text_metrics.perplexity_from_nll(2 * math.log(4.0), 2) == pytest.approx(4.0)
    assert text_metrics.perplexity_from_nll(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="n_tokens"):
        text_metrics.perplexity_from_nll(1.0, 0)
    with pytest.raises(ValueError, match="total_nll"):
        text_metrics.perplexity_from_nll(float("nan"), 3)


def test_score_text_samples_counts_empties():
    samples = [
        text_metrics.TextSample("t1", "the cat", ["The cat."]),
        text_metrics.TextSample("t2", None, ["dog"]),
    ]
    per_sample, summary = text_metrics.score_text_samples(samples)
    assert per_sample[1] == {"rouge_l": 0.0, "exact_match": 0.0}
    assert summary == {"rouge_l": 50.0, "exact_match": 50.0, "n": 2, "n_empty": 1}


# --------------------------------------------------------------------------- reports


def _results():
    return [
        reports.ModelResult(
            model="teacher",
            metrics={"CIDEr": 61.234, "METEOR": None, "perplexity": math.inf, "backend": "python-fallback"},
            n=5,
            prompt="Provide a one-sentence caption for the provided image.",
            decoding={"do_sample": False, "max_new_tokens": 64},
            normalizer_version=None,
            timings={"generate_s": 1.5},
        ),
        reports.ModelResult(model="student|taid", metrics={"CIDEr": 40.0}, n=5, prompt="p", decoding={}),
    ]


def test_write_reports_produces_the_three_files(tmp_path):
    samples = [{"model": "teacher", "id": "a", "prediction": None, "references": ["a dog"], "score": 0.0}]
    paths = reports.write_reports(tmp_path, _results(), samples, meta={"task": "captions"})
    data = json.loads(paths["results"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    teacher = data["models"]["teacher"]
    assert teacher["metrics"]["perplexity"] == "inf" and teacher["n"] == 5
    assert teacher["decoding"]["max_new_tokens"] == 64 and teacher["timings"]["generate_s"] == 1.5
    assert data["meta"] == {"task": "captions"}
    rows = [json.loads(line) for line in paths["samples"].read_text().splitlines()]
    assert rows == samples
    md = paths["markdown"].read_text()
    assert "| model | n | CIDEr | METEOR | perplexity |" in md
    assert "| teacher | 5 | 61.23 | n/a | inf |" in md
    assert "| student\\|taid | 5 | 40.00 | n/a | n/a |" in md
    assert "- teacher: backend = python-fallback" in md
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md", "samples.jsonl"]


def test_reports_are_replaced_atomically(tmp_path, monkeypatch):
    reports.write_results_json(tmp_path, _results())
    before = (tmp_path / "results.json").read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)  # the one atomic writer reports use
    with pytest.raises(OSError, match="disk full"):
        reports.write_results_json(tmp_path, _results()[:1])
    assert (tmp_path / "results.json").read_text() == before
    assert os.listdir(tmp_path) == ["results.json"]


def test_reports_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        reports.write_results_json(tmp_path, [_results()[0], _results()[0]])
    with pytest.raises(ValueError, match="score"):
        reports.write_samples_jsonl(tmp_path, [{"id": "a", "prediction": "x", "references": []}])
    bad = reports.ModelResult(model="m", metrics={"by_type": {"x": 1}}, n=1, prompt="p", decoding={})
    with pytest.raises(ValueError, match="extra"):
        reports.write_results_json(tmp_path, [bad])
