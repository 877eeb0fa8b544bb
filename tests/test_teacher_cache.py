"""The offline teacher cache end to end: build, resume after kill -9, 2 processes, train from it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from taid_vlm.cli import main
from composed_pair import save_composed_pair
from taid_vlm.data import load_records
from taid_vlm.teacher_cache import CacheError, TeacherCache
from taid_vlm.train import distill, load_config
from taid_vlm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return save_composed_pair(root, 16, 2)


def cache_args(root: Path, out: str, *extra: str) -> list[str]:
    return ["teacher-cache", f"--teacher={root / 'teacher'}", f"--data={root / 'shapes' / 'train.jsonl'}",
            f"--output={root / out}", "--records-per-shard=3", "--batch-size=2", "--no-progress", *extra]


def run_config(root: Path, out: str, **overrides):
    values = dict(student=str(root / "student"), data=str(root / "shapes" / "train.jsonl"), output=str(root / out),
                  max_steps=3, batch_size=4, save_every=100, log_every=1, progress=False, seed=3, lr=3e-3)
    values.update(overrides)
    return load_config(None, values)


def files_of(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def test_fp32_cache_with_k_equal_to_vocab_trains_the_same_student_as_the_live_teacher(pair):
    assert main(cache_args(pair, "exact", "--top-k=100000", "--logit-dtype=float32")) == 0
    cache = TeacherCache(pair / "exact")
    assert cache.top_k == cache.teacher["vocab_size"]
    live = distill(run_config(pair, "live", teacher=str(pair / "teacher")))
    cached = distill(run_config(pair, "from-cache", teacher_cache=str(pair / "exact")))
    a = load_file(str(live.student_dir / "model.safetensors"))
    b = load_file(str(cached.student_dir / "model.safetensors"))
    start = load_file(str(pair / "student" / "model.safetensors"))
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 1e-3
    # Same loss at every step to fp32 precision; Adam's normalised first steps turn that into
    # weight differences three orders of magnitude below what training moved.
    losses_live = [r["loss"] for r in read_metrics(pair / "live" / "metrics.jsonl")]
    losses_cached = [r["loss"] for r in read_metrics(pair / "from-cache" / "metrics.jsonl")]
    assert losses_cached == pytest.approx(losses_live, rel=1e-5)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 5e-3 * moved
    assert not (pair / "from-cache" / "teacher_responses.jsonl").exists()


def test_kill_9_during_the_build_then_rerun_gives_the_identical_cache(pair):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "taid_vlm.cli"]
    whole = subprocess.run(command + cache_args(pair, "whole", "--records-per-shard=1", "--batch-size=1"), env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]

    victim = subprocess.Popen(command + cache_args(pair, "killed", "--records-per-shard=1", "--batch-size=1"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = pair / "killed" / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None and len(list(shards.glob("shard-*"))) < 4:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = len(list(shards.glob("shard-*")))
    assert 4 <= done < 16, f"kill landed after {done} of 16 shards"
    assert json.loads((pair / "killed" / "cache.json").read_text())["complete"] is False
    with pytest.raises(CacheError, match="did not finish.*again"):
        TeacherCache(pair / "killed")

    rerun = subprocess.run(command + cache_args(pair, "killed", "--records-per-shard=1", "--batch-size=1"), env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{16 - done} built now" in rerun.stdout or f"{15 - done} built now" in rerun.stdout
    finished = {k: v for k, v in files_of(pair / "killed").items() if not k.startswith("shards/.tmp")}
    assert finished == files_of(pair / "whole")


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="accelerate CLI missing")
def test_two_processes_build_the_same_cache_as_one(pair):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "taid_vlm.cli"]
    two = subprocess.run(launcher + cache_args(pair, "two"), env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "taid_vlm.cli"] + cache_args(pair, "one"), env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert files_of(pair / "two") == files_of(pair / "one")
    assert len(list((pair / "one" / "shards").glob("shard-*"))) == 6


def test_mismatches_fail_with_the_record_and_the_fix(pair, capsys):
    assert main(cache_args(pair, "k8", "--top-k=8")) == 0
    cache = TeacherCache(pair / "k8")
    assert cache.top_k == 8 and cache.settings.logit_dtype == "bfloat16"
    rows = [json.loads(line) for line in (pair / "shapes" / "train.jsonl").read_text().splitlines()]
    changed = json.loads(json.dumps(rows))
    changed[2]["conversations"][-1]["value"] = "something else"
    (pair / "shapes" / "changed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in changed))
    with pytest.raises(CacheError, match=rf"record {rows[2]['id']!r} changed since teacher cache"):
        distill(run_config(pair, "bad1", teacher_cache=str(pair / "k8"), data=str(pair / "shapes" / "changed.jsonl")))

    extra = rows + [dict(rows[0], id="brand-new")]
    (pair / "shapes" / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extra))
    with pytest.raises(CacheError, match="record 'brand-new' is not in teacher cache"):
        distill(run_config(pair, "bad2", teacher_cache=str(pair / "k8"), data=str(pair / "shapes" / "extra.jsonl")))

    capsys.readouterr()
    assert main(["distill", f"--student={pair / 'student'}", f"--data={pair / 'shapes' / 'extra.jsonl'}",
                 f"--teacher-cache={pair / 'k8'}", f"--output={pair / 'bad-cli'}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("taid-vlm distill: error: record 'brand-new' is not in teacher cache")
    assert not (pair / "bad-cli").exists()  # the cache is checked before the output is created
    with pytest.raises(CacheError, match="max_length=None, the run uses max_length=512"):
        distill(run_config(pair, "bad3", teacher_cache=str(pair / "k8"), max_length=512))
    with pytest.raises(CacheError, match="was built with teacher .*the run names 'someone/else'"):
        distill(run_config(pair, "bad4", teacher_cache=str(pair / "k8"), teacher="someone/else"))

    # Other settings on the same output: refused, naming what differs.
    assert main(cache_args(pair, "k8", "--top-k=16")) == 2
    assert "top_k: cached 8, now 16" in capsys.readouterr().err

    # Every loss of the zoo trains from the k = 8 cache.
    for loss in ("fkl", "rkl", "tvd", "gjsd", "skew_fkl", "skew_rkl", "akl", "ctkd", "dkd", "taid"):
        result = distill(run_config(pair, f"zoo-{loss}", teacher_cache=str(pair / "k8"), loss=loss, max_steps=1))
        assert result.final_loss is not None and result.final_loss == result.final_loss, loss


def test_a_cache_built_on_other_records_is_refused_on_resume(pair, capsys):
    assert main(cache_args(pair, "limited", "--data-limit=4")) == 0
    assert main(cache_args(pair, "limited")) == 2
    assert "record_ids_sha256" in capsys.readouterr().err
    (pair / "not-a-cache").mkdir()
    (pair / "not-a-cache" / "x.txt").write_text("mine")
    assert main(cache_args(pair, "not-a-cache")) == 2
    assert "is not a teacher cache" in capsys.readouterr().err


def test_sequence_level_kd_trains_on_the_teachers_cached_answers(pair):
    assert main(cache_args(pair, "answers", "--top-k=8", "--responses=teacher", "--max-new-tokens=3", "--data-limit=4")) == 0
    cache = TeacherCache(pair / "answers")
    records = load_records(pair / "shapes" / "train.jsonl")[:4]
    answered = cache.with_teacher_responses(records)
    assert [m["role"] for m in answered[0].messages] == [m["role"] for m in records[0].messages]
    assert any(a.messages != r.messages for a, r in zip(answered, records))  # the teacher's words, not the data's
    result = distill(run_config(pair, "seqkd", teacher_cache=str(pair / "answers"), responses="teacher", data_limit=4,
                                max_steps=2, batch_size=2))
    assert result.steps == 2 and result.final_loss == result.final_loss
    with pytest.raises(CacheError, match="built with --responses teacher"):
        distill(run_config(pair, "seqkd-bad", teacher_cache=str(pair / "answers"), data_limit=4, max_steps=1))
