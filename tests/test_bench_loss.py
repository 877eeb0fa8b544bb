"""scripts/bench_loss.py end to end at a tiny shape: the floor, the ratio and the JSON it writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_loss.py"
TINY = ["--tokens", "24", "--hidden", "16", "--vocab", "96", "--repeats", "1"]


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bench_writes_floor_ratio_and_memory_and_combines(tmp_path):
    out = tmp_path / "bench.json"
    proc = run(*TINY, "--losses", "taid", "fkl", "--chunk-sizes", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    assert set(payload["naive"]) == {"taid/float32", "fkl/float32"}
    assert [(r["loss"], r["chunk_size"]) for r in payload["rows"]] == [("taid", 8), ("fkl", 8)]
    for row in payload["rows"]:
        assert row["floor_s"] > 0 and row["ratio"] == pytest.approx(row["seconds"] / row["floor_s"], rel=1e-2)
        assert row["naive_reference"] == f"{row['loss']}/float32" and row["naive_over_chunked_peak"] > 0
        assert {"student_logits", "teacher_logits", "loss_and_grad_kernel", "grad_hidden_gemm", "grad_head_gemm"} <= set(row["one_chunk_profile_s"])
    assert "load_average_1_5_15min_at_start" in payload["machine"]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == payload["summary"]

    naive = tmp_path / "naive.json"
    assert run(*TINY, "--naive-only", "--out", str(naive)).returncode == 0
    combined = tmp_path / "combined.json"
    assert run("--combine", str(out), "--naive-from", str(naive), "--out", str(combined)).returncode == 0
    summary = json.loads(combined.read_text())["summary"]
    assert summary["naive_peak_mb"] == json.loads(naive.read_text())["naive"]["taid/float32"]["peak_mb"]

    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(json.loads(naive.read_text()), shape={"tokens": 16, "hidden": 16, "vocab": 96})))
    mismatch = run("--combine", str(out), "--naive-from", str(other), "--out", str(tmp_path / "x.json"))
    assert mismatch.returncode == 2 and "measure the plain path at the run's shape" in mismatch.stderr


def test_ce_weight_compares_one_fused_pass_with_two_passes(tmp_path):
    out = tmp_path / "ce.json"
    proc = run(*TINY, "--ce-weight", "0.25", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    summary = payload["summary"]
    assert summary["ce_weight"] == 0.25 and summary["loss"] == "taid"
    assert summary["fused_peak_mb"] == payload["peaks"]["fused"]["peak_mb"] and summary["two_peak_mb"] == payload["peaks"]["two"]["peak_mb"]
    timing = payload["timing"]
    assert len(timing["all_fused_s"]) == len(timing["all_two_s"]) == 1  # alternated in one process
    assert summary["two_over_fused_time"] == pytest.approx(timing["two_s"] / timing["fused_s"], rel=1e-2)
    assert "load_average_1_5_15min_at_start" in payload["machine"] and "load_average_1min_at_end" in timing
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary
    bad = run(*TINY, "--ce-weight", "1.5")
    assert bad.returncode != 0 and "strictly between 0 and 1" in bad.stderr
