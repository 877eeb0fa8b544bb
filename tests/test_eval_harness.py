"""The evaluation harness: batch-size independence, nothing dropped, what the outputs record,
perplexity, the CLI, and clear errors for bad input. Tiny models and a handful of items."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from taid_vlm.data import DataError, VQA_SUFFIX
from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.eval import EvalError, evaluate, load_eval_set, model_names
from taid_vlm.eval.caption_metrics import java_available
from taid_vlm.eval.command import add_eval_parser, run_eval
from taid_vlm.eval.generation import last_run
from taid_vlm.eval.scoring import score_text, score_vqa
from taid_vlm.models import load
from taid_vlm.models.composed import build_composed_vlm
from taid_vlm.testing.tiny import save_tiny, tiny_tokenizer

LIMIT = 8
RUN_FIELDS = ("metrics", "n", "prompt", "decoding", "normalizer_version", "timings", "extra")
TIMING_KEYS = ("items_per_s", "tokens_per_s")


# ---- fixtures: data and tiny checkpoints, built once -------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes(out, 2, 2, seed=0, image_size=32)
    return out


@pytest.fixture(scope="module")
def text_shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_shapes")
    generate_shapes(out, 4, 2, seed=0, image_size=32, text=True)
    return out


def _save_composed(path, initializer_range):
    model, processor = build_composed_vlm(
        "tiny", tokenizer=tiny_tokenizer(None), seed=0, text_config={"initializer_range": initializer_range}
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """A tiny composed VLM whose random weights give a different answer per item."""
    return _save_composed(tmp_path_factory.mktemp("ckpt") / "student", 0.2)


@pytest.fixture(scope="module")
def silent_vlm(tmp_path_factory):
    """Default init: it answers only newlines, which normalise to an empty answer."""
    return _save_composed(tmp_path_factory.mktemp("ckpt") / "silent", 0.02)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("ckpt") / "qwen")


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory, shapes, vlm, silent_vlm):
    out = tmp_path_factory.mktemp("vqa_run")
    results = evaluate([vlm, silent_vlm], shapes / "test_vqa.jsonl", "vqa", out, batch_size=8, limit=LIMIT,
                       max_new_tokens=6, progress=False)
    return results, out


def _samples(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def _without_timings(entry):
    entry = {k: v for k, v in entry.items() if k != "timings"}
    entry["metrics"] = {k: v for k, v in entry["metrics"].items() if k not in TIMING_KEYS}
    return entry


# ---- batch-size independence ------------------------------------------------------------------------------


def test_batch_1_and_8_give_identical_vqa_predictions_and_scores(tmp_path, shapes, vlm, vqa_run):
    batched, out8 = vqa_run
    single = evaluate([vlm], shapes / "test_vqa.jsonl", "vqa", tmp_path, batch_size=1, limit=LIMIT,
                      max_new_tokens=6, progress=False)
    rows8 = [r for r in _samples(out8) if r["model"] == "student"]
    rows1 = _samples(tmp_path)
    assert [r["prediction"] for r in rows1] == [r["prediction"] for r in rows8]
    assert len({r["prediction"] for r in rows1}) > 1, "a constant answer would make this test vacuous"
    assert rows1 == rows8
    a, b = _without_timings(single["models"]["student"]), _without_timings(batched["models"]["student"])
    a["decoding"].pop("batch_size"), b["decoding"].pop("batch_size")
    assert a == b


def test_batch_1_and_8_give_identical_text_answers_scores_and_perplexity(tmp_path, text_shapes, text_model):
    runs = {}
    for batch_size in (1, 8):
        out = tmp_path / f"b{batch_size}"
        runs[batch_size] = evaluate([text_model], text_shapes / "train.jsonl", "text", out, batch_size=batch_size,
                                    max_new_tokens=5, progress=False)["models"]["qwen"]
        runs[batch_size]["samples"] = _samples(out)
    one, eight = runs[1], runs[8]
    assert [s["prediction"] for s in one["samples"]] == [s["prediction"] for s in eight["samples"]]
    assert [s["score"] for s in one["samples"]] == [s["score"] for s in eight["samples"]]
    assert one["metrics"]["perplexity"] == pytest.approx(eight["metrics"]["perplexity"], rel=1e-5)
    assert one["extra"]["generated_tokens"] == eight["extra"]["generated_tokens"]
    for s1, s8 in zip(one["samples"], eight["samples"]):
        assert s1["perplexity"] == pytest.approx(s8["perplexity"], rel=1e-5)


# ---- what the outputs hold ---------------------------------------------------------------------------------


def test_several_models_are_scored_on_the_same_items_with_everything_recorded(vqa_run):
    results, out = vqa_run
    meta = results["meta"]
    assert list(results["models"]) == ["student", "silent"] == meta["models"]
    assert meta["n_items"] == LIMIT and meta["task"] == "vqa"
    assert meta["instructions"] == [VQA_SUFFIX]
    assert meta["prompt_template"] == "<image>\n{question}" + VQA_SUFFIX
    for entry in results["models"].values():
        assert set(RUN_FIELDS) <= set(entry) and entry["n"] == LIMIT
        assert entry["decoding"]["max_new_tokens"] == 6 and entry["decoding"]["do_sample"] is False
        assert entry["decoding"]["padding_side"] == "left" and entry["decoding"]["stop_tokens"]
        assert entry["normalizer_version"].startswith("vqav2-official")
        assert entry["timings"]["generate_s"] > 0 and entry["metrics"]["items_per_s"] > 0
        assert entry["metrics"]["tokens_per_s"] > 0
        assert entry["extra"]["example_prompt"].count(VQA_SUFFIX.strip()) == 1
        assert sum(g["n"] for g in entry["extra"]["by_family"].values()) == LIMIT
        assert sum(g["n"] for g in entry["extra"]["by_answer_type"].values()) == LIMIT
    samples = _samples(out)
    assert len(samples) == 2 * LIMIT
    assert {s["model"] for s in samples} == {"student", "silent"}
    assert all(s["references"] and "family" in s for s in samples)
    markdown = (out / "results.md").read_text()
    assert "| student | 8 |" in markdown and "| silent | 8 |" in markdown
    assert "VQA accuracy by question family" in markdown


def test_empty_answers_are_counted_and_scored_wrong_never_dropped(vqa_run):
    results, out = vqa_run
    silent = results["models"]["silent"]
    assert silent["metrics"]["n_empty"] == LIMIT and silent["metrics"]["accuracy"] == 0.0
    rows = [s for s in _samples(out) if s["model"] == "silent"]
    assert len(rows) == LIMIT and all(r["empty"] and r["score"] == 0.0 for r in rows)
    # it never emits a stop token, so every answer runs to max_new_tokens, and each token is counted
    assert silent["extra"]["n_hit_max_new_tokens"] == LIMIT
    assert silent["extra"]["generated_tokens"] == LIMIT * 6


def test_answers_are_matched_to_their_own_items_and_scored_officially(tmp_path, shapes, vlm):
    """An adapter that answers each question correctly (in its own words) scores 100: the answers
    are paired with the right items across batches, and normalised before matching."""
    adapter = load(vlm)
    items = {item.id: item for item in load_eval_set(shapes / "test_vqa.jsonl", "vqa").items}

    def answer(records, max_new_tokens, **kwargs):
        return [f"The {items[r.id].references[0].capitalize()}." for r in records]

    adapter.generate = answer
    results = evaluate([adapter], shapes / "test_vqa.jsonl", "vqa", tmp_path, batch_size=3, labels=["oracle"],
                       progress=False)
    oracle = results["models"]["oracle"]
    assert oracle["metrics"]["accuracy"] == 100.0 and oracle["n"] == len(items)
    assert oracle["extra"]["source"] == "<in-memory ModelAdapter>"
    # a generate() that does not stream its tokens: throughput in tokens is unknown, not invented
    assert oracle["metrics"]["tokens_per_s"] is None and oracle["extra"]["generated_tokens"] is None


def test_scoring_counts_empty_and_unparsable_answers(shapes, text_shapes):
    items = load_eval_set(shapes / "test_vqa.jsonl", "vqa", limit=4).items
    predictions = [items[0].references[0].upper() + ".", "", "  \n", "?!"]
    scores = score_vqa(items, predictions)
    assert [row["score"] for row in scores.samples] == [1.0, 0.0, 0.0, 0.0]
    assert scores.metrics["n_empty"] == 3 and scores.metrics["accuracy"] == 25.0
    text_items = load_eval_set(text_shapes / "train.jsonl", "text", limit=2).items
    text = score_text(text_items, [text_items[0].references[0], ""], [(2.0, 4), (6.0, 4)])
    assert text.metrics["exact_match"] == 50.0 and text.metrics["n_empty"] == 1
    assert text.metrics["perplexity"] == pytest.approx(math.exp(8.0 / 8))


# ---- perplexity ---------------------------------------------------------------------------------------------


def test_reference_perplexity_equals_the_models_own_loss_on_the_reference(tmp_path, text_shapes, text_model):
    adapter = load(text_model)
    item = load_eval_set(text_shapes / "train.jsonl", "text", limit=1).items[0]
    out = evaluate([adapter], text_shapes / "train.jsonl", "text", tmp_path, limit=1, max_new_tokens=1,
                   labels=["m"], progress=False)
    batch = adapter.render([item.target])
    labels = batch.input_ids.masked_fill(~last_run(batch.response_mask), -100)
    with torch.no_grad():
        loss = adapter.model(**batch.inputs, labels=labels).loss
    assert out["models"]["m"]["metrics"]["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
    assert out["models"]["m"]["extra"]["reference_tokens"] == int((labels != -100).sum())
    assert out["models"]["m"]["extra"]["reference_tokens"] < batch.num_response_tokens  # earlier turns not scored


def test_last_run_keeps_only_the_last_turns_tokens():
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0], [0] * 9], dtype=torch.bool)
    expected = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0], [0] * 9], dtype=torch.bool)
    assert torch.equal(last_run(mask), expected)


# ---- captions (pycocoevalcap spawns Java: one test only) --------------------------------------------------


def test_captions_are_scored_with_the_coco_metrics_and_the_backend_is_recorded(tmp_path, shapes, vlm):
    results = evaluate([vlm], shapes / "test_caption.jsonl", "caption", tmp_path, max_new_tokens=8, progress=False)
    entry = results["models"]["student"]
    metrics = entry["metrics"]
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert isinstance(metrics[name], float)
    assert metrics["SPICE"] is None and "unavailable" in metrics["spice_status"]
    assert metrics["backend"] == ("pycocoevalcap" if java_available() else "python-fallback")
    assert results["meta"]["instructions"] == ["Provide a one-sentence caption for the provided image."]
    assert entry["decoding"]["max_new_tokens"] == 8 and entry["n"] == 2
    rows = _samples(tmp_path)
    assert len(rows) == 2 and all(len(r["references"]) == 5 and "CIDEr" in r for r in rows)
    assert f"student: backend = {metrics['backend']}" in (tmp_path / "results.md").read_text()


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "file", "needle"),
    [
        ("vqa", "test_caption.jsonl", r"test_caption\.jsonl: --task vqa needs rows with 'question' and 'answers'.*"
                                      r"use --task caption"),
        ("caption", "test_vqa.jsonl", r"test_vqa\.jsonl: --task caption needs rows with 'references'.*use --task vqa"),
        ("text", "test_vqa.jsonl", r"test_vqa\.jsonl: --task text needs rows with 'messages' or 'conversations'"),
    ],
)
def test_a_file_of_another_task_is_refused_naming_file_and_field(tmp_path, shapes, vlm, task, file, needle):
    with pytest.raises(EvalError, match=needle):
        evaluate([vlm], shapes / file, task, tmp_path, progress=False)


def test_a_vqa_row_without_answers_names_the_file_line_and_field(tmp_path, shapes, vlm):
    rows = (shapes / "test_vqa.jsonl").read_text().splitlines()[:2]
    broken = json.loads(rows[1])
    del broken["answers"]
    path = tmp_path / "partial.jsonl"
    path.write_text(rows[0].replace('"images/', f'"{shapes}/images/') + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(DataError, match=r"partial\.jsonl:2 .*answers missing"):
        evaluate([vlm], path, "vqa", tmp_path / "out", progress=False)


def test_repeated_ids_are_refused(tmp_path, text_shapes):
    row = (text_shapes / "test_vqa.jsonl").read_text().splitlines()[0]
    path = tmp_path / "twice.jsonl"
    path.write_text(row + "\n" + row + "\n")
    with pytest.raises(EvalError, match=r"twice\.jsonl: record id\(s\) .* more than once"):
        load_eval_set(path, "vqa")


def test_a_model_whose_generate_fails_is_named(tmp_path, text_shapes, text_model):
    adapter = load(text_model)

    def broken(records, max_new_tokens, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    adapter.generate = broken
    with pytest.raises(EvalError, match=r"model 'broken-student' could not generate .*RuntimeError: CUDA error"):
        evaluate([adapter], text_shapes / "test_vqa.jsonl", "vqa", tmp_path, labels=["broken-student"], limit=2,
                 progress=False)
    assert not (tmp_path / "results.json").exists()


def test_a_text_only_model_on_images_and_a_missing_checkpoint_are_named(tmp_path, shapes, text_model):
    with pytest.raises(EvalError, match=r"model 'qwen' is text-only \(qwen2\) but .*test_vqa\.jsonl has images"):
        evaluate([text_model], shapes / "test_vqa.jsonl", "vqa", tmp_path, limit=1, progress=False)
    with pytest.raises(EvalError, match=r"cannot load model 'nowhere': no such checkpoint directory"):
        evaluate([text_model, tmp_path / "nowhere"], shapes / "test_vqa.jsonl", "vqa", tmp_path, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match=r"cannot load model 'empty' from .*empty: OSError"):
        evaluate([tmp_path / "empty"], shapes / "test_vqa.jsonl", "vqa", tmp_path, limit=1, progress=False)


def test_model_names_default_to_directories_and_labels_must_match(tmp_path):
    a, b, c = tmp_path / "run1" / "student", tmp_path / "run2" / "student", tmp_path / "teacher"
    for path in (a, b, c):
        path.mkdir(parents=True)
    assert model_names([c, a, b]) == ["teacher", "run1/student", "run2/student"]
    assert model_names(["composed:tiny"]) == ["composed:tiny"]
    with pytest.raises(EvalError, match="one --label per --model"):
        model_names([a, b], labels=["x"])
    with pytest.raises(EvalError, match="unique"):
        model_names([a, b], labels=["x", "x"])


# ---- command line ---------------------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="taid-vlm")
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def test_cli_writes_the_three_outputs_and_prints_the_table(tmp_path, text_shapes, text_model, capsys):
    out = tmp_path / "out"
    args = _parse(["--model", str(text_model), "--label", "tiny-qwen", "--data", str(text_shapes / "test_vqa.jsonl"),
                   "--task", "vqa", "--output", str(out), "--limit", "2", "--max-new-tokens", "2", "--quiet"])
    assert run_eval(args) == 0
    assert {p.name for p in out.iterdir()} == {"results.json", "samples.jsonl", "results.md"}
    assert "| tiny-qwen | 2 |" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["models"]["tiny-qwen"]["decoding"]["max_new_tokens"] == 2


def test_cli_bad_input_prints_one_clear_line_and_returns_2(tmp_path, text_shapes, text_model, capsys):
    args = _parse(["--model", str(text_model), "--data", str(text_shapes / "test_caption.jsonl"), "--task", "vqa",
                   "--output", str(tmp_path)])
    assert run_eval(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("taid-vlm eval: ") and "test_caption.jsonl" in err and "'answers'" in err
    args = _parse(["--model", str(text_model), "--data", str(text_shapes / "test_vqa.jsonl"), "--task", "vqa",
                   "--output", str(tmp_path), "--column", "answers"])
    assert run_eval(args) == 2
    assert "FIELD=COLUMN" in capsys.readouterr().err


# ---- data-parallel evaluation --------------------------------------------------------------------------


def test_two_processes_each_answer_half_and_rank_0_writes_what_one_process_writes(tmp_path, vlm):
    """torchrun with 2 gloo processes on 61 questions (an odd count): the same answers, samples and
    scores as one process; meta records the split; the files are written once."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun missing")
    data = tmp_path / "shapes"
    generate_shapes(data, 2, 12, seed=3, image_size=32)
    args = ["--model", str(vlm), "--data", str(data / "test_vqa.jsonl"), "--task", "vqa", "--limit", "61",
            "--batch-size", "4", "--max-new-tokens", "4", "--quiet"]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    two = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), "-m", "taid_vlm.cli", "eval", *args, "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote results.json") == 1  # rank 0 reports, once
    assert run_eval(_parse([*args, "--output", str(tmp_path / "one")])) == 0

    one_rows, two_rows = _samples(tmp_path / "one"), _samples(tmp_path / "two")
    assert len(one_rows) == 61 and two_rows == one_rows
    assert len({r["prediction"] for r in one_rows}) > 1, "a constant answer would make this test vacuous"
    one, two_results = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert _without_timings(two_results["models"]["student"]) == _without_timings(one["models"]["student"])
    assert (one["meta"]["processes"], one["meta"]["items_per_process"]) == (1, [61])
    assert two_results["meta"]["processes"] == 2 and two_results["meta"]["items_per_process"] == [32, 29]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
