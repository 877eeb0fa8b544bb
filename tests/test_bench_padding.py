"""bench_padding: the committed length histogram is the one its documented model builds, the sides
see the same records, and the summary states the targets as measured."""

from __future__ import annotations

import argparse
import json

import pytest


@pytest.fixture(scope="module")
def bench():
    from taid_vlm.bench import padding

    return padding


def test_the_committed_histogram_is_the_documented_model(bench):
    committed = json.loads(bench.HISTOGRAM.read_text())
    assert committed == json.loads(json.dumps(bench.make_histogram()))
    assert sum(b["count"] for b in committed["bins"]) == 158_000 and "not a measurement" in committed["source"]
    lengths = bench.sample_lengths(committed, 2000, seed=0)
    assert lengths == bench.sample_lengths(committed, 2000, seed=0)
    totals = sorted(p + r for p, r in lengths)
    assert 35 < totals[0] and totals[len(totals) // 2] < 400 < totals[-1]  # ragged: a long tail


def test_every_side_gets_the_same_records_grouped_or_not(bench):
    args = argparse.Namespace(lengths=str(bench.HISTOGRAM), records=12, seed=0, image_tokens=3, vocab=100)
    records = bench.step_records(args)
    assert all(len(p) > 3 and r for p, r in records)
    shuffled = bench.micro_batches(records, 4, grouped=False, seed=0)
    grouped = bench.micro_batches(records, 4, grouped=True, seed=0)
    assert sorted(sum(shuffled, [])) == sorted(sum(grouped, [])) == list(range(12))
    lengths = [len(records[i][0]) + len(records[i][1]) for i in sum(grouped, [])]
    assert lengths == sorted(lengths)
    padded = bench._rendered(records, grouped[0], False, 1 / 4096)
    packed = bench._rendered(records, grouped[0], True, 0.0)
    assert packed.input_ids.shape[0] == 1 and packed.num_response_tokens == padded.num_response_tokens


def _side(step, loss=0.5, tokens_per_s=1.0):
    return {"ran": True, "step_s": step, "cpu_s": step, "peak_mb": 1.0, "positions": 10, "loss": loss, "grad_norm": 0.2,
            "weights_fingerprint": [1.0, 2.0], "real_tokens": 100, "response_tokens": 60, "real_tokens_per_s": tokens_per_s}


def test_the_summary_compares_the_fastest_packed_side_with_padded_and_the_fastest_trl_side(bench):
    args = argparse.Namespace(records=16, micro_batch=8, image_tokens=0, vocab=32, device="cpu", dtype="float32",
                              teacher_layers=4, student_layers=2, teacher_hidden=512, student_hidden=256)
    results = {"ours_padded": _side(10.0), "ours_grouped": _side(7.0), "ours_packed": _side(6.5),
               "ours_grouped_packed": _side(5.0, loss=0.5 + 1e-8), "trl_gkd_full_logits": _side(8.0),
               "trl_distillation_chunked": _side(5.5), "trl_gkd_liger": {"ran": False, "error": "no GPU"}}
    summary = bench.summarise(args, results)
    assert (summary["fastest_packed_side"], summary["fastest_trl_side"]) == ("ours_grouped_packed", "trl_distillation_chunked")
    assert summary["packed_over_padded"] == 0.5 and summary["met"]["packed_over_padded"]
    assert summary["packed_over_fastest_trl"] == pytest.approx(0.909, abs=1e-3) and not summary["met"]["packed_over_fastest_trl"]
    assert summary["packed_over_padded_cpu"] == 0.5 and summary["not_run"] == {"trl_gkd_liger": "no GPU"}
    assert summary["loss_abs_diff_vs_padded"]["ours_grouped_packed"] == pytest.approx(1e-8)
