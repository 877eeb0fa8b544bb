"""scripts/bench_fused.py: every side's loss and gradients are checked against fp64; a side that
cannot run here is recorded with its error, the others still run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sides_are_measured_against_fp64_and_a_missing_one_is_recorded(tmp_path):
    out = tmp_path / "fused.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # TRITON_INTERPRET=1 (conftest): the Triton side runs interpreted
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_fused.py"), "--device", "cpu", "--tokens", "12",
                           "--hidden", "8", "--vocab", "50", "--check-tokens", "6", "--repeats", "1", "--dtype", "float32",
                           "--sides", "ours_triton", "liger_fljsd", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    ours = result["sides"]["ours_triton"]
    assert ours["ran"] and ours["tokens"] == 6 and ours["loss"] > 0
    assert ours["loss_rel_err"] < 1e-5 and ours["grad_hidden_rel_err"] < 1e-5 and ours["grad_head_rel_err"] < 1e-5
    liger = result["sides"]["liger_fljsd"]
    assert not liger["ran"] and liger["error"]  # no liger-kernel here, or no GPU for it
    assert result["summary"]["liger_fljsd"] == {"error": liger["error"]}
    assert result["summary"]["shape"] == {"tokens": 12, "hidden": 8, "vocab": 50, "dtype": "float32", "device": "cpu"}
