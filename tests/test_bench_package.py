"""The benchmarks as a package: scripts/ holds only thin entry points that run as the docs write
them, no file edits sys.path, every result goes through one runner and one writer, and a long
benchmark's keyed runs are reused only when nothing that decides them changed."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taid_vlm.bench import results, runner
from taid_vlm.bench.runs import reused_or_distilled
from taid_vlm.demo import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_scripts_are_thin_entry_points_of_bench_modules():
    assert {p.stem for p in SCRIPTS} >= {"bench_loss", "bench_quality", "bench_cache", "bench_scale", "bench_step",
                                         "bench_vs_trl", "bench_fused", "bench_generation", "gpu_check", "readme_tables",
                                         "fuzz_cli", "demo_sizing"}
    for script in SCRIPTS:
        tree = ast.parse(script.read_text())
        imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert [n.module.rsplit(".", 1)[0] for n in imports] == ["taid_vlm.bench"], script.name
        assert len(script.read_text().splitlines()) <= 10, f"{script.name} is an entry point: its code goes in taid_vlm/bench"


def test_nothing_edits_sys_path():
    files = [*SCRIPTS, *(ROOT / "taid_vlm").rglob("*.py"), *(ROOT / "tests").glob("*.py")]
    pattern = "sys.path." + "insert"  # spelt apart so that this file does not match itself
    offenders = [str(f.relative_to(ROOT)) for f in files if pattern in f.read_text(encoding="utf-8")]
    assert offenders == []


def test_every_script_answers_help_from_the_repository_root():
    """`python scripts/<name>.py --help` runs as the docs write it (the benchmarks' own code is imported)."""
    names = " ".join(p.name for p in SCRIPTS)
    code = ("import runpy, sys\n"
            f"for name in {names!r}.split():\n"
            "    sys.argv = [f'scripts/{name}', '--help']\n"
            "    try:\n"
            "        runpy.run_path(f'scripts/{name}', run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        assert e.code in (0, None), (name, e.code)\n"
            "    print('HELP-OK', name)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("HELP-OK") == len(SCRIPTS)
    assert "usage: bench_loss.py" in done.stdout and "--ce-weight" in done.stdout


def test_a_run_records_the_command_the_machine_its_load_and_the_time(tmp_path):
    run = runner.Run(command="python bench_x.py --tiny", packages=("torch",))
    record = run.record({"rows": [1]}, seconds=True)
    assert list(record) == ["rows", "command", "machine", "seconds"] and record["seconds"] >= 0
    assert record["command"] == "python bench_x.py --tiny"
    machine = record["machine"]
    assert machine["load_average_1_5_15min_at_start"] == [round(x, 2) for x in run.load_at_start]
    assert {"cpu", "cpu_count", "python", "load_average_1_5_15min_at_end", "torch", "torch_threads"} <= set(machine)
    kept = run.record({"command": "given", "x": 1})
    assert list(kept) == ["command", "x", "machine"] and kept["command"] == "given"  # a payload's own command stays
    path = results.write_result(tmp_path / "sub" / "r.json", record)
    assert path.read_text().endswith("}\n") and results.read_result(path) == json.loads(json.dumps(record))
    assert runner.command_line(["scripts/bench_loss.py", "--tokens", "8"]) == "python scripts/bench_loss.py --tokens 8"


def test_a_child_returns_its_last_json_line_and_a_failed_one_ends_the_benchmark():
    """Children are `python -m taid_vlm.bench.NAME`: here the loss benchmark's CE variant at a tiny shape."""
    tiny = ["--tokens", "8", "--hidden", "8", "--vocab", "16", "--repeats", "1", "--ce-weight", "0.5"]
    peak = runner.run_child("loss", [*tiny, "--ce-variant", "fused"], "fused variant")
    assert set(peak) == {"peak_mb", "seconds_single_pass"}
    with pytest.raises(SystemExit, match=r"bad variant failed \(exit 2\)"):
        runner.run_child("loss", [*tiny, "--ce-variant", "nope"], "bad variant")
    assert runner.child_command("scale", ["--x"], launcher=["torch.distributed.run"])[1:] == [
        "-m", "torch.distributed.run", "-m", "taid_vlm.bench.scale", "--x"]


def test_a_finished_student_run_is_reused_only_when_nothing_changed(tmp_path):
    """bench_quality resumes after an interruption; a stale run with other settings must not count."""
    from taid_vlm.demo.pipeline import initial_models, prepare_data

    preset = PRESETS["quick"].with_overrides(n_train=16, n_test=2)
    data = prepare_data(tmp_path / "data", preset, True, 0)
    init = initial_models(tmp_path / "init", data, preset, True, 0)
    budget = dataclasses.replace(preset.student_budget, steps=2, batch_size=4)
    run = tmp_path / "run"

    def weights_mtime() -> float:
        return (run / "student" / "model.safetensors").stat().st_mtime_ns

    reused_or_distilled(run, init["student"], None, data, "sft", budget, 0, 0.4, progress=False)
    first = weights_mtime()
    reused_or_distilled(run, init["student"], None, data, "sft", budget, 0, 0.4, progress=False)
    assert weights_mtime() == first
    reused_or_distilled(run, init["student"], None, data, "sft", dataclasses.replace(budget, steps=3), 0, 0.4,
                        progress=False)
    assert weights_mtime() != first
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3


def test_the_docs_name_only_benchmark_commands_that_exist():
    """Every `python scripts/<name>.py` a document shows names a script that is there."""
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), ROOT / "data" / "README.md"]
    named = {m for page in pages for m in re.findall(r"scripts/(\w+)\.py", page.read_text(encoding="utf-8"))}
    assert named and all((ROOT / "scripts" / f"{name}.py").is_file() for name in named), named
