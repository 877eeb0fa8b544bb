"""Benchmarks read as distributed: each reader on a fixture in the official layout (counts, answers,
references), known predictions scored by the benchmark's rules (hand-computed below), submission
files, bad files named with their entry, and one end-to-end run per task with a tiny VLM."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from PIL import Image

from taid_vlm.data import DataError
from taid_vlm.data.benchmarks import read_benchmark
from taid_vlm.data.prompts import CAPTION_PROMPT, VQA_SUFFIX
from taid_vlm.eval import EvalError, evaluate, run_evaluation
from taid_vlm.eval.benchmark_scores import score_benchmark, score_results_file
from taid_vlm.eval.benchmarks import BENCHMARKS, UNANSWERABLE_HINT, load_benchmark_set
from taid_vlm.eval.submissions import write_submissions
from taid_vlm.eval.caption_metrics import caption_scores
from taid_vlm.eval.command import add_eval_parser, config_from_args, run_eval
from taid_vlm.models import load
from taid_vlm.models.composed import build_composed_vlm
from taid_vlm.testing.tiny import tiny_tokenizer

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
VQAV2_Q = FIX / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json"
VQAV2_A = FIX / "vqav2" / "v2_mscoco_val2014_annotations.json"
TESTDEV_Q = FIX / "vqav2" / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
OKVQA = [FIX / "okvqa" / "OpenEnded_mscoco_val2014_questions.json", FIX / "okvqa" / "mscoco_val2014_annotations.json"]
TEXTVQA = FIX / "textvqa" / "TextVQA_0.5.1_val.json"
VIZWIZ = FIX / "vizwiz" / "val.json"
GQA = FIX / "gqa" / "testdev_balanced_questions.json"
COCO = FIX / "coco" / "dataset_coco.json"
FLICKR = FIX / "flickr30k" / "dataset_flickr30k.json"
NOCAPS = FIX / "nocaps" / "nocaps_val_4500_captions.json"


def _set(name, files, images, **options):
    return load_benchmark_set(name, [str(f) for f in files], data_options={"image_dir": str(images), **options})


def _by_id(eval_set):
    return {item.id: item for item in eval_set.items}


# ---- readers: right items, answers, references, images -----------------------------------------------------


def test_vqav2_pairs_questions_with_their_ten_answers_and_coco_2014_image_names():
    s = _set("vqav2", [VQAV2_A, VQAV2_Q], FIX / "vqav2" / "val2014")  # any order
    assert [i.id for i in s.items] == ["42000", "42001", "73000"] and s.scored and s.task == "vqa"
    items = _by_id(s)
    assert items["42000"].references == ["red"] * 7 + ["dark red"] * 2 + ["maroon"]
    assert items["42001"].meta["answer_type"] == "yes/no" and items["73000"].meta["question_id"] == 73000
    assert Path(items["73000"].prompt.images[0]).name == "COCO_val2014_000000000073.jpg"
    assert items["42000"].prompt.messages == [
        {"role": "user", "content": "<image>\nWhat color is the bus?" + VQA_SUFFIX}]


def test_okvqa_reads_the_vqa_api_layout_and_falls_back_to_coco_2017_image_names():
    s = _set("okvqa", OKVQA, FIX / "okvqa" / "val2014")
    (item,) = s.items
    assert item.references.count("race") == 6 and len(item.references) == 10
    assert Path(item.prompt.images[0]).name == "000000000099.jpg"
    assert item.prompt.messages[0]["content"].endswith(UNANSWERABLE_HINT + VQA_SUFFIX)


def test_textvqa_vizwiz_and_gqa_rows_come_out_with_their_answers_and_meta():
    text = _by_id(_set("textvqa", [TEXTVQA], FIX / "textvqa" / "train_images"))
    assert list(text) == ["34602", "34603"] and text["34603"].references == ["stop"] * 10
    viz = _set("vizwiz", [VIZWIZ], FIX / "vizwiz" / "val")
    assert [i.id for i in viz.items] == [f"VizWiz_val_{k:08d}.jpg" for k in range(4)]
    assert [i.meta["answerable"] for i in viz.items] == [1, 0, 1, 0]
    assert viz.items[1].meta["answer_type"] == "unanswerable" and len(viz.items[0].references) == 10
    gqa = _by_id(_set("gqa", [GQA], FIX / "gqa" / "images"))
    assert gqa["20968379"].references == ["girl"] and gqa["201640614"].meta["structural"] == "verify"
    assert Path(gqa["20968380"].prompt.images[0]).name == "n288870.jpg"


def test_karpathy_files_give_one_split_with_raw_sentences_as_references(tmp_path):
    test = _set("coco", [COCO], FIX / "coco" / "coco2014")
    assert [i.id for i in test.items] == ["391895", "522418"] and test.split == "test"
    assert test.items[0].references[0] == "A man with a red helmet on a small moped on a dirt road."
    assert len(test.items[1].references) == 5 and test.task == "caption"
    assert test.items[0].prompt.messages[0]["content"] == "<image>\n" + CAPTION_PROMPT
    val = _set("coco", [COCO], FIX / "coco" / "coco2014", split="val")
    assert [i.id for i in val.items] == ["184613"]
    for cocoid, folder in ((391895, "train2017"), (522418, "val2017")):  # the 2017 release renamed and re-split them
        (tmp_path / folder).mkdir(exist_ok=True)
        shutil.copy(FIX / "coco" / "coco2014" / "val2014" / f"COCO_val2014_{cocoid:012d}.jpg",
                    tmp_path / folder / f"{cocoid:012d}.jpg")
    renamed = _set("coco", [COCO], tmp_path)
    assert [Path(i.prompt.images[0]).relative_to(tmp_path).as_posix() for i in renamed.items] == [
        "train2017/000000391895.jpg", "val2017/000000522418.jpg"]
    flickr = _set("flickr30k", [FLICKR], FIX / "flickr30k" / "flickr30k-images")
    assert [i.id for i in flickr.items] == ["0"] and flickr.items[0].meta["file_name"] == "1000092795.jpg"


def test_nocaps_groups_its_ten_captions_per_image_and_keeps_the_domain():
    s = _set("nocaps", [NOCAPS], FIX / "nocaps" / "validation")
    assert len(s.items) == 4 and all(len(i.references) == 10 for i in s.items)
    assert [i.meta["domain"] for i in s.items] == ["in-domain", "in-domain", "near-domain", "out-domain"]
    assert s.items[0].meta["open_images_id"] == "0013ea2087020901"


def test_limit_keeps_the_first_items():
    assert [r.id for r in read_benchmark("vqav2", [VQAV2_Q, VQAV2_A], FIX / "vqav2" / "val2014", limit=2)] == [
        "42000", "42001"]


# ---- known predictions, scored by each benchmark's rules -----------------------------------------------------


def _results_file(tmp_path, rows):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    return path


def test_vqav2_known_predictions_score_the_official_human_agreement_accuracy(tmp_path):
    s = _set("vqav2", [VQAV2_Q, VQAV2_A], FIX / "vqav2" / "val2014")
    predictions = _results_file(tmp_path, [{"question_id": 73000, "answer": "Four"},  # any order, as servers take
                                           {"question_id": 42000, "answer": "Dark red."},
                                           {"question_id": 42001, "answer": "no"}])
    scores = score_results_file(s, predictions)
    # "dark red": 2 of 10 humans -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6; "no": 10 -> 1.0;
    # "four" -> "4": 1 human -> (1 * 0 + 9 * 1/3) / 10 = 0.3
    assert [r["score"] for r in scores.samples] == pytest.approx([0.6, 1.0, 0.3])
    assert scores.metrics["accuracy"] == pytest.approx(63.33)
    assert (scores.metrics["other"], scores.metrics["yes/no"], scores.metrics["number"]) == (60.0, 100.0, 30.0)


def test_okvqa_and_textvqa_use_the_same_ten_answer_rule():
    ok = score_benchmark(_set("okvqa", OKVQA, FIX / "okvqa" / "val2014"), ["racing"])
    assert ok.metrics["accuracy"] == 60.0  # 2 humans said "racing"
    text = score_benchmark(_set("textvqa", [TEXTVQA], FIX / "textvqa" / "train_images"), ["Dakota", "STOP!"])
    assert [r["score"] for r in text.samples] == pytest.approx([0.9, 1.0])  # 3 humans -> 0.9


def test_vizwiz_reports_accuracy_by_its_four_answer_types_and_unanswerable_handling(tmp_path):
    s = _set("vizwiz", [VIZWIZ], FIX / "vizwiz" / "val")
    # lower case: under the official rules (VizWiz's evaluator is vqaEval.py's) "Unanswerable" against ten
    # identical "unanswerable" scores 0, the quirk tests/test_vqa_rules.py pins
    answers = ["soup", "unanswerable", "unanswerable", "milk"]
    scores = score_results_file(s, _results_file(tmp_path, [
        {"image": f"VizWiz_val_{k:08d}.jpg", "answer": a} for k, a in enumerate(answers)]))
    # soup 8/10 humans -> 1; unanswerable 10/10 -> 1; "unanswerable" for a yes -> 0; milk 3/10 -> 0.9
    assert [r["score"] for r in scores.samples] == pytest.approx([1.0, 1.0, 0.0, 0.9])
    m = scores.metrics
    assert m["accuracy"] == 72.5 and m["other"] == 100.0 and m["yes/no"] == 0.0 and m["number"] is None
    assert m["unanswerable"] == 95.0  # (1 + 0.9) / 2 over the two questions marked unanswerable
    assert scores.extra["by_answer_type"]["unanswerable"] == {"accuracy": 95.0, "n": 2}
    # said "unanswerable" on items 2 and 3; items 2 and 4 are unanswerable: 1 hit of 2 each way
    assert (m["unanswerable_precision"], m["unanswerable_recall"], m["unanswerable_f1"]) == (50.0, 50.0, 50.0)
    assert scores.extra["benchmark_breakdowns"]["answerable"] == {"0": {"accuracy": 95.0, "n": 2},
                                                                  "1": {"accuracy": 50.0, "n": 2}}


def test_gqa_is_exact_match_after_normalisation_with_question_type_breakdowns(tmp_path):
    s = _set("gqa", [GQA], FIX / "gqa" / "images")
    scores = score_results_file(s, _results_file(tmp_path, [
        {"questionId": "20968379", "prediction": "The girl."}, {"questionId": "201640614", "prediction": "No"},
        {"questionId": "20968380", "prediction": "White"}]))
    assert [r["score"] for r in scores.samples] == [1.0, 0.0, 1.0]
    assert scores.metrics["accuracy"] == 66.67
    groups = scores.extra["benchmark_breakdowns"]
    assert groups["structural"] == {"query": {"accuracy": 100.0, "n": 2}, "verify": {"accuracy": 0.0, "n": 1}}
    assert groups["semantic"]["attr"] == {"accuracy": 50.0, "n": 2}


def test_caption_benchmarks_score_with_coco_metrics_and_nocaps_per_domain(tmp_path):
    coco = _set("coco", [COCO], FIX / "coco" / "coco2014")
    exact = [{"image_id": int(item.id), "caption": item.references[0]} for item in coco.items]  # COCO results
    scores = score_results_file(coco, _results_file(tmp_path, exact), caption_backend="python")
    assert scores.metrics["BLEU-4"] == pytest.approx(100.0)  # each caption is one of its references
    nocaps = _set("nocaps", [NOCAPS], FIX / "nocaps" / "validation")
    predictions = ["a red bus on a street", "a dog on grass", "soup in a bowl", "a jellyfish"]
    scores = score_benchmark(nocaps, predictions, caption_backend="python")
    in_domain = caption_scores({i.id: p for i, p in zip(nocaps.items[:2], predictions)},
                               {i.id: i.references for i in nocaps.items[:2]}, backend="python")
    assert scores.metrics["CIDEr (in-domain)"] == pytest.approx(in_domain["CIDEr"]) and in_domain["CIDEr"] > 0
    # a domain of one image: every n-gram's document frequency is 1, so CIDEr-D is 0 by construction
    assert scores.metrics["CIDEr (near-domain)"] == 0.0 == scores.metrics["CIDEr (out-domain)"]
    assert scores.extra["benchmark_breakdowns"]["domain"]["in-domain"]["n"] == 2


def test_a_results_file_with_a_missing_unknown_or_repeated_id_is_refused(tmp_path):
    s = _set("vqav2", [VQAV2_Q, VQAV2_A], FIX / "vqav2" / "val2014")
    ok = [{"question_id": q, "answer": "no"} for q in (42000, 42001, 73000)]
    for rows, needle in ((ok[:2], "no prediction for 1 item(s), e.g. ['73000']"),
                         (ok + [{"question_id": 5, "answer": "x"}], "[3]: question_id 5 is not an item"),
                         (ok + ok[:1], "[3]: a second prediction for question_id 42000"),
                         ([{"id": 42000, "answer": "x"}], "[0]: expected {'question_id': id, 'answer': string}")):
        with pytest.raises(EvalError, match=re.escape(needle)):
            score_results_file(s, _results_file(tmp_path, rows))
    assert score_results_file(s, _results_file(tmp_path, ok)).metrics["accuracy"] == pytest.approx(100 / 3, abs=0.01)
    # re-scoring needs no images (the README's recipe)
    no_images = load_benchmark_set("vqav2", [str(VQAV2_Q), str(VQAV2_A)], data_options={"check_images": "none"})
    assert score_results_file(no_images, _results_file(tmp_path, ok)).metrics["accuracy"] == pytest.approx(33.33)


# ---- unlabelled test splits and submission files -------------------------------------------------------------


def test_test_dev_questions_are_answered_unscored_and_written_in_the_server_format(tmp_path):
    s = _set("vqav2", [TESTDEV_Q], FIX / "vqav2" / "test2015")
    assert not s.scored and [i.references for i in s.items] == [[], []]
    assert Path(s.items[0].prompt.images[0]).name == "COCO_test2015_000000000001.jpg"
    scores = score_benchmark(s, ["yes", "  a\nlamp "])
    assert scores.metrics == {"accuracy": None, "n_empty": 0}
    samples = [{"model": "m", **row} for row in scores.samples]
    assert write_submissions(tmp_path, s, samples) == {"m": "submission-vqav2-m.json"}
    assert json.loads((tmp_path / "submission-vqav2-m.json").read_text()) == [
        {"question_id": 1000, "answer": "yes"}, {"question_id": 1001, "answer": "a lamp"}]
    viz = _set("vizwiz", [VIZWIZ], FIX / "vizwiz" / "val")
    write_submissions(tmp_path, viz, [{"model": "m", "id": i.id, "prediction": "x"} for i in viz.items])
    assert json.loads((tmp_path / "submission-vizwiz-m.json").read_text())[0] == {
        "image": "VizWiz_val_00000000.jpg", "answer": "x"}


# ---- bad files: one clear error naming the file and the entry -------------------------------------------------


def _copy(tmp_path, path, edit):
    data = json.loads(Path(path).read_text())
    edit(data)
    out = tmp_path / Path(path).name
    out.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("name, files, needle", [
    ("vqav2", [VIZWIZ], "not the vqav2 layout: a JSON list of 4 entries"),
    ("gqa", [VQAV2_Q], "not the gqa layout"),
    ("textvqa", [GQA], "not the textvqa layout"),
    ("vizwiz", [TEXTVQA], "not the vizwiz layout"),
    ("coco", [FLICKR], "use --benchmark flickr30k"),
    ("nocaps", [VIZWIZ], "not the nocaps layout"),
    ("nocaps", [COCO], "not the nocaps layout"),
    ("coco", [NOCAPS], "reads with --task caption"),
    ("vqav2", [VQAV2_A], "an annotations file without its questions file"),
    ("vqav2", [VQAV2_Q, VQAV2_Q], "a second questions file"),
])  # fmt: skip
def test_a_file_in_the_wrong_layout_is_named(name, files, needle):
    with pytest.raises(DataError, match="Fix: ") as e:
        read_benchmark(name, files, FIX)
    assert needle in str(e.value) and str(files[-1]) in str(e.value)


def test_a_question_without_annotation_names_both_files_and_the_question(tmp_path):
    annotations = _copy(tmp_path, VQAV2_A, lambda d: d["annotations"].pop(1))
    with pytest.raises(DataError) as e:
        read_benchmark("vqav2", [VQAV2_Q, annotations], FIX / "vqav2" / "val2014")
    message = str(e.value)
    assert f"{VQAV2_Q}:questions[1]" in message and "question_id 42001" in message and str(annotations) in message


def test_missing_images_name_the_entry_the_files_tried_and_the_folder_to_pass(tmp_path):
    with pytest.raises(DataError) as e:
        read_benchmark("vqav2", [VQAV2_Q, VQAV2_A], tmp_path)
    message = str(e.value)
    assert f"{VQAV2_Q}:questions[0] (record '42000')" in message and "COCO_val2014_000000000042.jpg" in message
    assert "pass --images" in message
    with pytest.raises(DataError, match=r"dataset_coco.json:images\[3\].*COCO_train2014_000000318556.jpg"):
        read_benchmark("coco", [COCO], FIX / "coco" / "coco2014", split="train")


def test_damaged_entries_and_mixed_labels_are_named(tmp_path):
    no_answers = _copy(tmp_path, TEXTVQA, lambda d: d["data"][1].pop("answers"))
    with pytest.raises(EvalError, match=r"TextVQA_0.5.1_val.json:data\[1\] \(record '34603'\): no answers"):
        _set("textvqa", [no_answers], FIX / "textvqa" / "train_images")
    bad = _copy(tmp_path, VIZWIZ, lambda d: d[2].update(answerable="yes"))
    with pytest.raises(DataError, match=r"val.json\[2\]: 'answerable' is 'yes'"):
        read_benchmark("vizwiz", [bad], FIX / "vizwiz" / "val")
    no_captions = _copy(tmp_path, NOCAPS, lambda d: d.update(annotations=[a for a in d["annotations"]
                                                                          if a["image_id"] != 2]))
    with pytest.raises(DataError, match=r"images\[2\] \(image id 2\): no caption"):
        read_benchmark("nocaps", [no_captions], FIX / "nocaps" / "validation")
    broken = tmp_path / "broken.json"
    broken.write_text('{"questions": [')
    with pytest.raises(DataError, match="broken.json:1: invalid JSON"):
        read_benchmark("vqav2", [broken], FIX)
    with pytest.raises(DataError, match="--split 'val' does not apply"):
        read_benchmark("gqa", [GQA], FIX / "gqa" / "images", split="val")
    with pytest.raises(DataError, match="nowhere: image folder not found"):
        read_benchmark("gqa", [GQA], tmp_path / "nowhere")


# ---- end to end: the command line with a tiny VLM ---------------------------------------------------------


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "student"
    model, processor = build_composed_vlm("tiny", tokenizer=tiny_tokenizer(None), seed=0,
                                          text_config={"initializer_range": 0.2})
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _cli(argv):
    parser = argparse.ArgumentParser(prog="taid-vlm")
    add_eval_parser(parser.add_subparsers(dest="command"))
    return run_eval(parser.parse_args(["eval", *argv]))


def test_cli_vqav2_writes_results_samples_and_a_submission_with_the_benchmark_recorded(tmp_path, vlm, capsys):
    out = tmp_path / "out"
    code = _cli(["--model", str(vlm), "--benchmark", "vqav2", "--data", str(VQAV2_Q), "--data", str(VQAV2_A),
                 "--images", str(FIX / "vqav2" / "val2014"), "--output", str(out), "--max-new-tokens", "3",
                 "--batch-size", "2", "--quiet"])
    assert code == 0 and "submission-vqav2-student.json" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    bench = results["meta"]["benchmark"]
    assert bench["name"] == "vqav2" and bench["metric"] == BENCHMARKS["vqav2"].metric and bench["scored"]
    assert bench["prompt"] == "<image>\n{question}" + VQA_SUFFIX and results["meta"]["task"] == "vqa"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    submission = json.loads((out / "submission-vqav2-student.json").read_text())
    assert [s["question_id"] for s in submission] == [42000, 42001, 73000]
    assert [s["answer"] for s in submission] == [" ".join(r["prediction"].split()) for r in samples]
    model = results["models"]["student"]
    assert model["extra"]["submission"] == "submission-vqav2-student.json"
    assert model["metrics"]["accuracy"] == pytest.approx(100 * sum(r["score"] for r in samples) / 3, abs=0.01)
    rescored = score_results_file(_set("vqav2", [VQAV2_Q, VQAV2_A], FIX / "vqav2" / "val2014"),
                                  out / "submission-vqav2-student.json")
    assert rescored.metrics["accuracy"] == model["metrics"]["accuracy"]  # the file scores what the run reported


def test_cli_nocaps_with_limit_and_a_caption_prompt(tmp_path, vlm):
    out = tmp_path / "out"
    results = evaluate([vlm], [NOCAPS], None, out, benchmark="nocaps", limit=3, max_new_tokens=4,
                       caption_backend="python", progress=False, image_dir=str(FIX / "nocaps" / "validation"))
    model = results["models"]["student"]
    assert model["n"] == 3 and results["meta"]["benchmark"]["prompt"] == "<image>\n" + CAPTION_PROMPT
    assert set(model["extra"]["benchmark_breakdowns"]["domain"]) == {"in-domain", "near-domain"}
    assert model["extra"]["submission"] == "submission-nocaps-student.json"


def test_cli_bad_benchmark_input_prints_one_line_naming_file_and_entry(tmp_path, vlm, capsys):
    args = ["--model", str(vlm), "--benchmark", "vqav2", "--data", str(VQAV2_Q), str(VQAV2_A),
            "--images", str(tmp_path), "--output", str(tmp_path / "out")]
    assert _cli(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "questions[0]" in err and "image not found" in err
    assert _cli(["--model", str(vlm), "--benchmark", "gqa", "--task", "caption", "--data", str(GQA),
                 "--output", str(tmp_path / "out")]) == 2
    assert "--benchmark gqa is a vqa benchmark" in capsys.readouterr().err
    assert _cli(["--model", str(vlm), "--task", "vqa", "--data", str(VQAV2_Q), str(VQAV2_A),
                 "--output", str(tmp_path / "out")]) == 2
    assert "need --benchmark" in capsys.readouterr().err
    assert _cli(["--model", str(vlm), "--data", str(GQA), "--output", str(tmp_path / "out")]) == 2
    assert "pass --task (vqa, caption, text) or --benchmark NAME" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- the same sets from Hugging Face datasets (parquet with image bytes) ------------------------------------


def _png_bytes(color):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_parquet_copy_reads_through_the_column_mapping_and_scores_the_same(tmp_path):
    datasets = pytest.importorskip("datasets")
    q = json.loads(VQAV2_Q.read_text())["questions"]
    a = {ann["question_id"]: ann for ann in json.loads(VQAV2_A.read_text())["annotations"]}
    rows = {"question_id": [x["question_id"] for x in q], "question": [x["question"] for x in q],
            "answers": [a[x["question_id"]]["answers"] for x in q],
            "answer_type": [a[x["question_id"]]["answer_type"] for x in q],
            "image": [{"bytes": _png_bytes((k * 60, 0, 0)), "path": None} for k in range(len(q))]}
    features = datasets.Features({
        "question_id": datasets.Value("int64"), "question": datasets.Value("string"),
        "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                     "answer_id": datasets.Value("int64")}],
        "answer_type": datasets.Value("string"), "image": datasets.Image()})
    path = tmp_path / "vqav2_val.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    s = load_benchmark_set("vqav2", [str(path)])
    assert s.format == "hf" and [i.id for i in s.items] == ["42000", "42001", "73000"]
    assert s.items[0].references == ["red"] * 7 + ["dark red"] * 2 + ["maroon"]
    scores = score_benchmark(s, ["Dark red.", "no", "Four"])
    assert scores.metrics["accuracy"] == pytest.approx(63.33) and scores.metrics["number"] == 30.0
    write_submissions(tmp_path, s, [{"model": "m", "id": i.id, "prediction": "no"} for i in s.items])
    assert json.loads((tmp_path / "submission-vqav2-m.json").read_text())[2] == {"question_id": 73000, "answer": "no"}
    captions = tmp_path / "flickr.parquet"
    datasets.Dataset.from_dict(
        {"caption": [["a dog", "a brown dog"]], "filename": ["1.jpg"],
         "image": [{"bytes": _png_bytes((0, 90, 0)), "path": None}]},
        features=datasets.Features({"caption": [datasets.Value("string")], "filename": datasets.Value("string"),
                                    "image": datasets.Image()}),
    ).to_parquet(str(captions))
    s = load_benchmark_set("flickr30k", [str(captions)], data_options={"columns": {"references": "caption"}})
    assert s.items[0].references == ["a dog", "a brown dog"] and s.items[0].prompt.messages[0]["content"].endswith(
        CAPTION_PROMPT)
    with pytest.raises(EvalError, match="--column works only with a Hugging Face dataset"):
        load_benchmark_set("gqa", [str(GQA)], data_options={"columns": {"answers": "x"}})


def test_fixture_generator_reproduces_the_committed_fixtures(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mbf", Path(__file__).parent / "fixtures" / "make_benchmark_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    for make in (module.vqav2, module.okvqa, module.textvqa, module.vizwiz, module.gqa, module.karpathy, module.nocaps):
        make()
    for path in FIX.rglob("*.json"):
        assert (tmp_path / path.relative_to(FIX)).read_text() == path.read_text(), path
    shutil.rmtree(tmp_path)


# ---- the README's commands run as written on the fixture copies of each layout ------------------------------


def _readme_commands():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Benchmarks as distributed", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`--benchmark " in line]
    return [re.search(r"`(--benchmark [^`]+)`", row).group(1) for row in rows]


def test_the_readme_lists_every_benchmark_with_a_command_that_runs(tmp_path, vlm, monkeypatch):
    commands = [c for c in _readme_commands() if "NAME" not in c]
    names = [shlex.split(c)[1] for c in commands]
    assert set(names) == set(BENCHMARKS), "every benchmark needs its command in the README"
    adapter = load(str(vlm), role="student")  # loaded once; the flags under test are the README's
    parser = argparse.ArgumentParser(prog="taid-vlm")
    add_eval_parser(parser.add_subparsers(dest="command"))
    for k, (name, command) in enumerate(zip(names, commands)):
        monkeypatch.chdir(FIX / name)
        args = parser.parse_args(["eval", "--model", str(vlm), "--output", str(tmp_path / f"out{k}"),
                                  *shlex.split(command)])
        config = dataclasses.replace(config_from_args(args), models=[adapter], limit=1, max_new_tokens=2,
                                     progress=False, caption_backend="python")
        results = run_evaluation(config)
        assert results["meta"]["benchmark"]["name"] == name and results["meta"]["n_items"] == 1, command


def test_a_test_dev_submission_is_filled_to_every_test2015_question(tmp_path):
    full = FIX / "vqav2" / "v2_OpenEnded_mscoco_test2015_questions.json"
    s = _set("vqav2", [full, TESTDEV_Q], FIX / "vqav2" / "test2015")  # test-dev is asked, test2015 fills
    assert [i.id for i in s.items] == ["1000", "1001"] and not s.scored
    assert "test2015" in s.describe()["submission"]["note"]
    write_submissions(tmp_path, s, [{"model": "m", "id": "1001", "prediction": "a lamp"},
                                    {"model": "m", "id": "1000", "prediction": "yes"}])
    assert json.loads((tmp_path / "submission-vqav2-m.json").read_text()) == [
        {"question_id": 1000, "answer": "yes"}, {"question_id": 1001, "answer": "a lamp"},
        {"question_id": 5000, "answer": ""}]


def test_nocaps_and_textvqa_test_files_without_labels_give_server_submissions(tmp_path):
    nocaps_test = _copy(tmp_path, NOCAPS, lambda d: d.pop("annotations"))  # nocaps_test_image_info.json's shape
    s = _set("nocaps", [nocaps_test], FIX / "nocaps" / "validation")
    assert not s.scored and len(s.items) == 4
    assert score_benchmark(s, ["a bus", "", "soup", "x"]).metrics == {"CIDEr": None, "n_empty": 1}
    write_submissions(tmp_path, s, [{"model": "m", "id": i.id, "prediction": "a photo"} for i in s.items])
    assert json.loads((tmp_path / "submission-nocaps-m.json").read_text())[3] == {"image_id": 3, "caption": "a photo"}
    text_test = _copy(tmp_path, TEXTVQA, lambda d: [row.pop("answers") for row in d["data"]])
    s = _set("textvqa", [text_test], FIX / "textvqa" / "train_images")
    assert not s.scored and s.describe()["metric"].startswith("not scored") and "EvalAI TextVQA" in s.describe()["metric"]


def test_cli_scores_a_results_file_made_elsewhere_without_a_model(tmp_path, capsys):
    predictions = _results_file(tmp_path, [{"image": f"VizWiz_val_{k:08d}.jpg", "answer": a}
                                           for k, a in enumerate(["soup", "Unanswerable", "unanswerable", "milk"])])
    out = tmp_path / "out"
    assert _cli(["--benchmark", "vizwiz", "--data", str(VIZWIZ), "--predictions", str(predictions),
                 "--label", "lmms-eval", "--vqa-rules", "lmms-eval", "--output", str(out)]) == 0  # no --images: none opened
    # lmms-eval rules normalise "Unanswerable" (the official ones would not: ten identical human answers)
    assert "| lmms-eval | 4 | 72.50 |" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    model = results["models"]["lmms-eval"]
    assert model["metrics"]["unanswerable_f1"] == 50.0 and results["meta"]["predictions"] == str(predictions)
    assert results["meta"]["vqa_rules"] == "lmms-eval"
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == pytest.approx([1.0, 1.0, 0.0, 0.9])
    common = ["--data", str(VIZWIZ), "--predictions", str(predictions), "--output", str(tmp_path / "o2")]
    for extra, needle in (([], "--predictions needs --benchmark"), (["--benchmark", "vizwiz", "--model", "m"],
                          "drop --model"), (["--benchmark", "vizwiz", "--limit", "2"], "--limit does not apply")):
        assert _cli([*common, *extra]) == 2 and needle in capsys.readouterr().err
    assert _cli(["--benchmark", "vqav2", "--data", str(TESTDEV_Q), "--predictions", str(predictions),
                 "--output", str(tmp_path / "o3")]) == 2
    assert "has no labels (a test split)" in capsys.readouterr().err
