"""scripts/gpu_check.sh (taid_vlm/bench/gpu_check.py): one line and exit 0 without CUDA, nothing written; on a GPU each part runs
under its own time limit and a failing or hanging one is recorded while the rest go on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    from taid_vlm.bench import gpu_check

    return gpu_check


def run_sh(*args, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_without_cuda_one_line_exit_0_and_nothing_written(tmp_path):
    out = tmp_path / "results" / "gpu"
    committed = sorted((ROOT / "docs" / "results" / "gpu").iterdir())
    done = run_sh("--out-dir", str(out), "--work-dir", str(tmp_path / "work"), "--copy-to", str(tmp_path / "copy"), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()] and "no CUDA device here" in done.stdout
    assert done.stderr == ""
    assert not out.exists() and not (tmp_path / "work").exists() and not (tmp_path / "copy").exists()
    assert sorted((ROOT / "docs" / "results" / "gpu").iterdir()) == committed
    default = run_sh(tmp_path=tmp_path)  # the default folder, docs/results/gpu/, is left as it was
    assert default.returncode == 0 and "no CUDA device here" in default.stdout
    assert sorted((ROOT / "docs" / "results" / "gpu").iterdir()) == committed


def test_its_arguments_are_checked_first_even_without_cuda(tmp_path):
    done = run_sh("--parts", "scale", "nope", tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_check: error: --parts nope: no such part; the parts are fused_liger_shape,")
    done = run_sh("--budget-s", "5", tmp_path=tmp_path)
    assert done.returncode == 2 and "at least 60 seconds" in done.stderr
    plan = run_sh("--dry-run", "--parts", "scale", "vs_trl", tmp_path=tmp_path)
    assert plan.returncode == 0
    lines = plan.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["scale", "vs_trl"]
    assert "bench_scale.py --device cuda --modes fp32,bf16,bf16_ckpt" in lines[0] and "--pair-dir" in lines[0]


def test_the_plan_covers_what_the_issue_asks_and_fits_ten_minutes(gpu_check, tmp_path):
    args = gpu_check.parse_args(["--out-dir", str(tmp_path)])
    parts = {p.name: " ".join(p.argv) for p in gpu_check.plan(args)}
    assert "--tokens 8192 --hidden 4096 --vocab 128256" in parts["loss_liger_shape"]
    assert "--dtypes float32 bfloat16" in parts["loss_liger_shape"] and "--dtypes float32 bfloat16" in parts["loss_readme_shape"]
    assert "--chunk-kernels torch triton" in parts["loss_readme_shape"]
    assert "bench_fused.py --device cuda --tokens 8192 --hidden 4096 --vocab 128256" in parts["fused_liger_shape"]
    assert "bench_vs_trl.py --device cuda" in parts["vs_trl"]
    assert sum(p.limit_s for p in gpu_check.plan(args)) <= 600 and args.budget_s <= 600


def test_each_part_has_its_limit_and_a_failure_does_not_stop_the_rest(gpu_check, tmp_path, monkeypatch):
    py = sys.executable
    fake = [
        gpu_check.Part("fine", 30, [py, "-c", "print('measured')"]),
        gpu_check.Part("broken", 30, [py, "-c", "import sys; print('partial'); sys.exit('boom: no kernel image')"]),
        gpu_check.Part("hangs", 2, [py, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])"]),
        gpu_check.Part("after", 30, [py, "-c", "print('still ran')"]),
    ]
    monkeypatch.setattr(gpu_check, "plan", lambda args: fake)
    monkeypatch.setattr(gpu_check, "probe", lambda env=None: {"gpu": "Fake GPU"})
    out, copy = tmp_path / "gpu", tmp_path / "copy"
    wheels = tmp_path / "no-wheels"
    assert gpu_check.main(["--out-dir", str(out), "--work-dir", str(tmp_path / "work"), "--wheels", str(wheels),
                           "--site", str(tmp_path / "site"), "--copy-to", str(copy)]) == 0
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["gpu"] == "Fake GPU" and summary["wheels_installed"] == []
    status = {p["name"]: p for p in summary["parts"]}
    assert [p["name"] for p in summary["parts"]] == ["fine", "broken", "hangs", "after"]
    assert status["fine"]["status"] == "ok" and status["after"]["status"] == "ok"
    assert status["broken"]["status"] == "failed" and status["broken"]["exit_code"] == 1
    assert "boom: no kernel image" in status["broken"]["output_tail"][-1]
    assert status["hangs"]["status"] == "timeout" and status["hangs"]["seconds"] < 30  # its child was killed too
    assert (copy / "gpu_results.tar.gz").exists() and json.loads((copy / "gpu_check.json").read_text()) == summary


def test_a_spent_budget_skips_the_remaining_parts(gpu_check, tmp_path, monkeypatch):
    py = sys.executable
    fake = [gpu_check.Part("slow", 100, [py, "-c", "import time; time.sleep(50)"]), gpu_check.Part("next", 30, [py, "-c", "pass"])]
    monkeypatch.setattr(gpu_check, "plan", lambda args: fake)
    monkeypatch.setattr(gpu_check, "probe", lambda env=None: {"gpu": "Fake GPU"})
    now = [1000.0]
    monkeypatch.setattr(gpu_check.time, "time", lambda: now[0])

    def run_part(part, limit, env, log):  # the first part takes the whole budget
        now[0] += 600
        return {"name": part.name, "status": "ok", "seconds": 600}

    monkeypatch.setattr(gpu_check, "run_part", run_part)
    gpu_check.main(["--out-dir", str(tmp_path / "gpu"), "--work-dir", str(tmp_path / "work"), "--wheels", str(tmp_path / "none")])
    parts = json.loads((tmp_path / "gpu" / "gpu_check.json").read_text())["parts"]
    assert [(p["name"], p["status"]) for p in parts] == [("slow", "ok"), ("next", "skipped")]


def test_carried_wheels_are_installed_once_and_put_after_the_repo(gpu_check, tmp_path, monkeypatch):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"")
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        site.mkdir(exist_ok=True)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(gpu_check.subprocess, "run", fake_pip)
    assert gpu_check.install(wheels, site) == ["demo-1.0-py3-none-any.whl"]
    assert gpu_check.install(wheels, site) == ["demo-1.0-py3-none-any.whl"]  # idempotent: pip ran once
    assert len(calls) == 1 and "--no-index" in calls[0] and "--target" in calls[0]
    paths = gpu_check.child_env(site)["PYTHONPATH"].split(":")
    assert paths[:2] == [str(ROOT), str(site)]
