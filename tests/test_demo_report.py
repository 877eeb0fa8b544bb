"""What the demo report says about TAID's schedule is derived from metrics.jsonl, and
``python -m taid_vlm`` is the same command line as ``taid-vlm``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from taid_vlm.demo.report import t_schedule_sentence, t_schedule_summary

ROOT = Path(__file__).resolve().parent.parent


def _metrics(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_t_on_the_linear_floor_is_reported_as_such(tmp_path):
    rows = [{"step": s, "loss": 1.0, "t": 0.4 + 0.1 * s, "t_linear": 0.4 + 0.1 * s} for s in range(1, 6)]
    summary = t_schedule_summary(_metrics(tmp_path / "m.jsonl", rows))
    assert summary["logged_steps"] == 5 and summary["max_abs_t_minus_t_linear"] < 1e-12
    assert "equalled t_linear" in t_schedule_sentence(summary)


def test_t_above_the_floor_is_reported_with_its_size_and_step(tmp_path):
    rows = [{"step": 1, "t": 0.4, "t_linear": 0.4}, {"step": 2, "t": 0.55, "t_linear": 0.5},
            {"step": 3, "t": 0.6, "t_linear": 0.6}, {"step": 4, "loss": 0.5}]
    summary = t_schedule_summary(_metrics(tmp_path / "m.jsonl", rows))
    assert summary["at_step"] == 2 and abs(summary["max_abs_t_minus_t_linear"] - 0.05) < 1e-12
    sentence = t_schedule_sentence(summary)
    assert "departed from t_linear by up to 0.0500 (step 2)" in sentence and "equalled" not in sentence


def test_no_logged_t_gives_no_statement(tmp_path):
    assert t_schedule_summary(_metrics(tmp_path / "m.jsonl", [{"step": 1, "loss": 2.0}])) is None


def test_python_dash_m_runs_the_cli():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "taid_vlm", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "demo" in ok.stdout and "distill" in ok.stdout and "eval" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "taid_vlm", "eval", "--model", "m", "--data", "d", "--task", "vqa",
                          "--output", "o", "--vqa-rules", "vqav2"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "--vqa-rules" in bad.stderr and "Traceback" not in bad.stderr
