"""The demo pipeline end to end on the quick preset: every phase, the report, the cache."""

import json
import math
from pathlib import Path

import pytest
import yaml

from taid_vlm.cli import main
from taid_vlm.demo import PRESETS, run_demo


@pytest.mark.slow
def test_quick_demo_writes_a_complete_report_and_reuses_its_teacher(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "taid student" in printed and "report:" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    names = [r["model"] for r in results["rows"]]
    assert names == ["teacher", "sft student", "fkl student", "taid student"]
    for row in results["rows"]:
        for key in ("vqa_accuracy", "CIDEr", "BLEU-4"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["model"], key)
        assert row["params"] > 0
    teacher_params = results["rows"][0]["params"]
    assert all(r["params"] < teacher_params for r in results["rows"][1:])
    report = (tmp_path / "report.md").read_text()
    for needle in ("| teacher |", "| taid student |", "## Settings", "## Run time", "taid-vlm demo --preset quick"):
        assert needle in report
    # the report states what the run used, read from the run: the quick preset's python fallback,
    # the official VQA rules, the counts scored, and the t vs t_linear summary from metrics.jsonl
    assert results["caption_backends"] == ["python-fallback"] and "scored by python-fallback" in report
    assert "pycocoevalcap" not in report
    assert results["vqa_rules"] == ["official"] and f"on {results['rows'][0]['vqa_n']} questions" in report
    assert results["command"].startswith("taid-vlm demo --preset quick") and results["machine"]["cores"] >= 1
    assert results["taid_schedule"]["logged_steps"] >= 2 and "t_linear" in report
    for plot in ("accuracy.png", "loss_curves.png", "taid_t.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    # the transfer regime: the teacher learns from every scene, the students only from the first 48
    quick = PRESETS["quick"]
    assert results["training_scenes"] == {"teacher": quick.n_train, "students": quick.transfer_records} and quick.transfer_records < quick.n_train
    assert f"first {quick.transfer_records} of the teacher's {quick.n_train} training scenes" in report
    for loss in ("sft", "taid"):
        student_config = yaml.safe_load((tmp_path / "students" / loss / "config.yaml").read_text())
        assert len(Path(student_config["data"]).read_text().splitlines()) == quick.transfer_records
    teacher_config = yaml.safe_load((tmp_path / "teacher" / "config.yaml").read_text())
    assert len(Path(teacher_config["data"]).read_text().splitlines()) == quick.n_train
    t_rows = [json.loads(x) for x in (tmp_path / "students" / "taid" / "metrics.jsonl").read_text().splitlines()]
    assert t_rows[0]["t"] == pytest.approx(0.4) and t_rows[-1]["t"] > t_rows[0]["t"]

    again = run_demo(tmp_path, PRESETS["quick"], progress=False, losses=("sft",))
    assert again.teacher_reused


@pytest.mark.slow
def test_quick_text_demo_runs_on_causal_lms(tmp_path):
    preset = PRESETS["quick"].with_overrides(eval_questions=20, eval_captions=6)
    result = run_demo(tmp_path, preset, text=True, progress=False, losses=("sft", "taid"))
    assert [r["model"] for r in result.rows] == ["teacher", "sft student", "taid student"]
    config = json.loads((tmp_path / "init" / "teacher" / "config.json").read_text())
    assert config["model_type"] == "llama"  # a plain causal LM, not the composed VLM
    assert all(math.isfinite(r["vqa_accuracy"]) for r in result.rows)


def test_demo_flags_pick_the_preset():
    """No flag means the default preset (a mutually exclusive group once turned it into None)."""
    from taid_vlm.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["demo"]).preset == "default"
    assert parse(["demo", "--quick"]).preset == "quick"
    assert parse(["demo", "--full"]).preset == "full"
    assert parse(["demo", "--preset", "quick"]).preset == "quick"
