"""bench_vs_trl's summary: the strongest TRL side that ran is the comparator, a side that could
not run is kept with its reason, and all sides must start from our weights."""

from __future__ import annotations

import argparse

import pytest


@pytest.fixture(scope="module")
def bench():
    from taid_vlm.bench import vs_trl

    return vs_trl


def _side(step, peak, loss, fingerprint=(1.0, 2.0)):
    return {"ran": True, "step_s": step, "peak_mb": peak, "loss": loss, "grad_norm": 0.1,
            "weights_fingerprint": list(fingerprint), "response_tokens": 10}


ARGS = argparse.Namespace(device="cpu", dtype="float32", vocab=32, batch_size=2, seq_len=16, prompt_len=8)


def test_the_fastest_trl_side_that_ran_is_the_comparator(bench):
    results = {
        "trl_gkd_full_logits": _side(3.0, 900.0, 0.5),
        "trl_distillation_chunked": _side(2.0, 300.0, 0.5 + 1e-7),
        "trl_gkd_liger": {"ran": False, "error": "RuntimeError: 0 active drivers", "exit_code": 1},
        "ours_chunked_fkl": _side(1.0, 200.0, 0.5),
    }
    summary = bench.summarise(ARGS, results)
    assert summary["strongest_trl_side"] == "trl_distillation_chunked"
    assert (summary["trl_step_s"], summary["trl_peak_mb"], summary["ours_step_s"], summary["ours_peak_mb"]) == (2.0, 300.0, 1.0, 200.0)
    assert summary["loss_abs_diff"] == pytest.approx(1e-7)
    assert set(summary["loss_abs_diff_per_side"]) == {"trl_gkd_full_logits", "trl_distillation_chunked"}
    assert set(bench.SIDES) == set(results)


def test_different_weights_or_no_trl_side_abort(bench):
    with pytest.raises(SystemExit, match="weights"):
        bench.summarise(ARGS, {"trl_gkd_full_logits": _side(1.0, 1.0, 0.5, (9.0, 9.0)), "ours_chunked_fkl": _side(1.0, 1.0, 0.5)})
    with pytest.raises(SystemExit, match="no TRL side ran"):
        bench.summarise(ARGS, {"trl_gkd_liger": {"ran": False, "error": "x"}, "ours_chunked_fkl": _side(1.0, 1.0, 0.5)})
