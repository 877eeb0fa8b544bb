"""Every command fails cleanly and loses nothing: one line, exit 2, no file that existed changed.

One test per failure class of issue #15 (data errors, value ranges, overwrite safety, resume
mismatch and corrupt-checkpoint fallback, disk full, SIGINT), each through the real CLI
``main([...])`` (in process, so torch is imported once) on tiny text models.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from composed_pair import save_text_pair

from taid_vlm.cli import main
from taid_vlm.errors import user_message

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    return save_text_pair(tmp_path_factory.mktemp("cli"), 16)


def common(root: Path, out: Path | str, *extra: str) -> list[str]:
    return ["distill", f"--teacher={root / 'teacher'}", f"--student={root / 'student'}",
            f"--data={root / 'shapes' / 'train.jsonl'}", f"--output={out}", "--batch-size=4", "--max-steps=2",
            "--save-every=1", "--log-every=1", "--no-progress", "--seed=1", *extra]


@pytest.fixture(scope="module")
def finished(pair: Path) -> Path:
    """A finished 2-step run (checkpoints step-1 and step-2, student); tests copy it before changing it."""
    out = pair / "finished"
    assert main(common(pair, out)) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fails_cleanly(argv: list[str], capsys, command: str = "distill", code: int = 2) -> str:
    """Run the CLI; assert the exit code and ONE ``taid-vlm <command>: error:`` line, no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"taid-vlm {command}: error: ")
    assert err.rstrip("\n").splitlines()[-1] == lines[0]
    return lines[0]


def write_rows(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ---- data errors ------------------------------------------------------------------------------------

GOOD_ROW = json.dumps({"id": "ok", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})


@pytest.mark.parametrize("rows, expected", [
    ([GOOD_ROW, "{not json"], "data.jsonl:2"),
    ([json.dumps({"id": "img", "image": "nope.png", "conversations": [
        {"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}]})], "nope.png"),
    ([json.dumps({"id": "q", "messages": [{"role": "user", "content": "only a question"}]})], "no assistant turn"),
    ([], "holds no rows"),
])
def test_data_errors_name_the_file_and_touch_nothing(pair, tmp_path, capsys, rows, expected):
    data = write_rows(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    argv = common(pair, out) + [f"--data={data}"]
    line = fails_cleanly(argv, capsys)
    assert expected in line
    assert snapshot(out) == before  # no config.yaml, no metrics: the output was never touched


def test_data_that_is_not_utf8_names_the_line(pair, tmp_path, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(GOOD_ROW.encode() + b"\n" + "caf\u00e9".encode("latin-1") + b"\n")
    line = fails_cleanly(common(pair, tmp_path / "out") + [f"--data={data}"], capsys)
    assert "latin1.jsonl:2: not UTF-8 text" in line and not (tmp_path / "out").exists()


def test_too_long_record_is_refused_before_the_output_exists(pair, tmp_path, capsys):
    long = json.dumps({"id": "long", "messages": [{"role": "user", "content": "word " * 3000},
                                                  {"role": "assistant", "content": "ok"}]})
    data = write_rows(tmp_path / "long.jsonl", [long] + [GOOD_ROW] * 4)
    line = fails_cleanly(common(pair, tmp_path / "out") + [f"--data={data}"], capsys)
    assert "'long'" in line and "max_length=1024" in line
    assert not (tmp_path / "out").exists()


# ---- value ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    (["--loss=gjsd", "loss_params.beta=1.5"], "loss_params.beta of loss 'gjsd' must be in [0, 1]"),
    (["--loss=skew_fkl", "loss_params.skew=-0.1"], "loss_params.skew"),
    (["loss_params.t=0.5"], "loss_params.t is not a parameter of loss 'taid'"),
    (["--t-start=0.9", "--t-end=0.5"], "t_start (0.9) must be <= t_end (0.5)"),
    (["--lr=0"], "lr must be > 0"),
    (["--temperature=-1"], "temperature must be > 0"),
    (["--chunk-size=0"], "chunk_size must be >= 1"),
    (["--student-dtype=int8"], "student_dtype must be one of"),
    (["--teacher-device=gpu"], "teacher_device must be"),
    (["--max-steps=ten"], "max_steps expects int"),
    (["learning_rate=1"], "unknown key 'learning_rate'"),
    (["--batch-size=64"], "needs at least 64 records"),
    (["--teacher-device=cuda:7"], "cuda:7"),
])
def test_out_of_range_values_are_refused_not_clamped(pair, tmp_path, capsys, extra, expected):
    if extra == ["--teacher-device=cuda:7"]:
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    line = fails_cleanly(common(pair, tmp_path / "out") + extra, capsys)
    assert expected in line
    assert not (tmp_path / "out").exists()


def test_teacher_equal_to_student_is_refused_unless_asked_for(pair, tmp_path, capsys):
    argv = common(pair, tmp_path / "out") + [f"--student={pair / 'teacher'}"]
    assert "same model" in fails_cleanly(argv, capsys) and not (tmp_path / "out").exists()
    copy = shutil.copytree(pair / "teacher", tmp_path / "teacher-copy")  # same weights, another folder
    assert "--allow-self-distill" in fails_cleanly(common(pair, tmp_path / "out") + [f"--student={copy}"], capsys)
    assert main(argv + ["--allow-self-distill", "--max-steps=1"]) == 0


# ---- overwrite safety ------------------------------------------------------------------------------------


def test_overwrite_keeps_the_previous_run_until_the_new_one_started(pair, finished, tmp_path, capsys, monkeypatch):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    # 1. bad input: nothing moved at all
    bad = write_rows(tmp_path / "bad.jsonl", ["{oops"])
    fails_cleanly(common(pair, run, "--overwrite") + [f"--data={bad}"], capsys)
    assert snapshot(run) == before
    # 2. the new run fails after the output was claimed (no step could be applied): old run restored
    import taid_vlm.train.loop as loop

    real = loop.training_loss

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(loop, "training_loss", poisoned)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        line = fails_cleanly(common(pair, run, "--overwrite", "--max-bad-steps=5"), capsys)
    assert "none of the 2 step(s) could be applied" in line and "Likely cause" in line
    assert snapshot(run) == before and not list(run.glob(".replaced-*"))
    monkeypatch.undo()
    # 3. a teacher inside the folder --overwrite would replace is refused
    inside = shutil.copytree(pair / "teacher", run / "my-teacher")
    before = snapshot(run)
    line = fails_cleanly(common(pair, run, "--overwrite") + [f"--teacher={inside}"], capsys)
    assert "lies inside --output" in line and snapshot(run) == before
    shutil.rmtree(inside)
    # 4. a run that starts replaces the old one, and no copy of it is left behind
    old_student = snapshot(run / "student")
    assert main(common(pair, run, "--overwrite", "--loss=fkl")) == 0
    assert "loss: fkl" in (run / "config.yaml").read_text()
    assert snapshot(run / "student") != old_student and not list(run.glob(".replaced-*"))


def test_occupied_output_is_refused_without_overwrite(pair, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    line = fails_cleanly(common(pair, run), capsys)
    assert "holds another run" in line and "--overwrite" in line and snapshot(run) == before


def test_a_failed_start_does_not_block_the_retry(pair, tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(common(pair, out, "--batch-size=64"), capsys)
    assert main(common(pair, out)) == 0


def test_data_shapes_and_demo_refuse_files_they_did_not_write(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("my own data\n")
    before = snapshot(data)
    line = fails_cleanly(["data", "shapes", "--out", str(data), "--n-train", "2", "--n-test", "1"], capsys, "data")
    assert "train.jsonl" in line and "--overwrite" in line and snapshot(data) == before
    assert main(["data", "shapes", "--out", str(data), "--n-train", "2", "--n-test", "1", "--image-size", "16",
                 "--overwrite"]) == 0
    assert (data / "train.jsonl").read_text() != "my own data\n"

    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "precious.txt").write_text("keep me")
    before = snapshot(mine)
    line = fails_cleanly(["demo", "--quick", "--out", str(mine)], capsys, "demo")
    assert "did not write" in line and snapshot(mine) == before


def test_distill_and_teacher_cache_word_a_model_that_does_not_load_alike(pair, tmp_path, capsys):
    """One loader with user-facing errors (models.load_model) serves both commands."""
    missing = tmp_path / "no-teacher"
    line = fails_cleanly(["distill", f"--teacher={missing}", f"--student={pair / 'student'}",
                          f"--data={pair / 'shapes' / 'train.jsonl'}", f"--output={tmp_path / 'run'}",
                          "--no-progress"], capsys)
    assert f"teacher={missing}: cannot load it" in line
    line = fails_cleanly(["teacher-cache", "--teacher", str(missing), "--data", str(pair / "shapes" / "train.jsonl"),
                          "--output", str(tmp_path / "cache"), "--no-progress"], capsys, "teacher-cache")
    assert f"teacher={missing}: cannot load it" in line and not (tmp_path / "cache").exists()


# ---- resume ----------------------------------------------------------------------------------------------


def test_resume_with_other_settings_lists_the_differences(pair, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    line = fails_cleanly(common(pair, run, "--resume", "--loss=fkl", "--max-steps=3"), capsys)
    assert "loss: 'taid' -> 'fkl'" in line and "--resume-accept-changes" in line
    assert snapshot(run) == before  # config.yaml not rewritten
    assert main(common(pair, run, "--resume", "--loss=fkl", "--max-steps=3", "--resume-accept-changes")) == 0
    assert "loss: fkl" in (run / "config.yaml").read_text()


def test_corrupt_latest_checkpoint_falls_back_and_says_so(pair, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    latest = run / "checkpoints" / "step-0000002" / "state" / "__0_0.distcp"  # the weights and optimizer shard
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    # naming that checkpoint explicitly: a clean error naming the damaged file
    before = snapshot(run)
    line = fails_cleanly(common(pair, run, f"--resume={latest.parent.parent}", "--max-steps=3"), capsys)
    assert str(latest) in line and "damaged" in line and snapshot(run) == before
    # --resume: the newest intact checkpoint (step 1), with a warning naming the damaged file
    with pytest.warns(UserWarning, match=r"resuming from .*step-0000001 instead: checkpoint file .*step-0000002"):
        assert main(common(pair, run, "--resume", "--max-steps=3")) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_checkpoint_from_before_dcp_still_resumes_exactly(pair, finished, tmp_path):
    """The former layout (model.safetensors + optimizer.pt, written by rank 0): the same continuation
    as the DCP checkpoint it was made from."""
    import torch
    from safetensors.torch import load_file, save_model

    from taid_vlm.models import load
    from taid_vlm.train.checkpoint import load_sharded
    from taid_vlm.train.config import load_config
    from taid_vlm.train.loop import _optimizer
    from taid_vlm.train.parallel import Trainable

    dcp_run, legacy_run = copy_run(finished, tmp_path / "dcp"), copy_run(finished, tmp_path / "legacy")
    step2 = legacy_run / "checkpoints" / "step-0000002"
    student = load(pair / "student").model
    optimizer = _optimizer(student, load_config(None, {"student": "s", "teacher": "t", "data": "d", "output": "o"}), [])
    assert load_sharded(step2 / "state", Trainable(student, {}), optimizer) == ([], [])
    save_model(student, str(step2 / "model.safetensors"))  # what the former checkpoints held
    torch.save(optimizer.state_dict(), step2 / "optimizer.pt")
    shutil.rmtree(step2 / "state")
    for run in (dcp_run, legacy_run):
        assert main(common(pair, run, "--resume", "--max-steps=3")) == 0
    a, b = (load_file(str(run / "student" / "model.safetensors")) for run in (dcp_run, legacy_run))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- disk full ---------------------------------------------------------------------------------------------


def test_disk_full_names_the_folder_and_leaves_no_partial_checkpoint(pair, tmp_path, capsys, monkeypatch):
    from torch.distributed.checkpoint import filesystem

    real = filesystem._write_item  # where DCP writes each tensor of a shard file
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= writes_per_checkpoint:
            return real(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")  # the step-2 shard file is left partial

    writes_per_checkpoint = 0
    monkeypatch.setattr(filesystem, "_write_item", lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1])
    assert main(common(pair, tmp_path / "probe", "--max-steps=1")) == 0  # counts the writes of one checkpoint
    writes_per_checkpoint, calls["n"] = calls["n"], 0
    monkeypatch.setattr(filesystem, "_write_item", full_disk)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = fails_cleanly(common(pair, out, "--max-steps=3"), capsys)
    assert "no space left" in line and str(out / "checkpoints") in line and "--resume" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000001"]  # no .tmp-step-*
    assert (out / "notes.txt").read_text() == "mine"


def test_disk_full_while_saving_the_student_keeps_the_checkpoint_for_resume(pair, tmp_path, capsys, monkeypatch):
    from taid_vlm.models import ModelAdapter

    real = ModelAdapter.save

    def full_disk(self, out_dir, state_dict=None):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "model.safetensors").write_bytes(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ModelAdapter, "save", full_disk)
    out = tmp_path / "out"
    line = fails_cleanly(common(pair, out), capsys)
    assert "no space left" in line and str(out) in line and "--resume" in line
    assert not (out / ".tmp-student").exists() and not (out / "student").exists()
    monkeypatch.setattr(ModelAdapter, "save", real)
    assert main(common(pair, out, "--resume")) == 0 and (out / "student" / "model.safetensors").is_file()


def test_os_errors_the_user_can_fix_are_worded_as_such():
    assert "no space left" in user_message(OSError(errno.ENOSPC, "No space", "/x/y"))
    assert "read-only" in user_message(OSError(errno.EROFS, "Read-only file system", "/x"))
    assert user_message(RuntimeError("a bug")) is None


# ---- internal errors, --debug, SIGINT --------------------------------------------------------------------------


def test_internal_errors_say_how_to_see_the_traceback(pair, tmp_path, capsys, monkeypatch):
    import taid_vlm.train as train

    def broken(config):
        raise RuntimeError("boom")

    monkeypatch.setattr(train, "distill", broken)
    line = fails_cleanly(common(pair, tmp_path / "out"), capsys, code=1)
    assert "internal error (RuntimeError: boom)" in line and "--debug" in line
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug"] + common(pair, tmp_path / "out"))
    monkeypatch.setenv("TAID_VLM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(common(pair, tmp_path / "out"))


def test_sigint_prints_where_the_last_checkpoint_is_and_exits_130(pair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = [sys.executable, "-m", "taid_vlm.cli"] + common(pair, out, "--max-steps=100000", "--save-every=1")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoints" / "step-0000002").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("taid-vlm distill: interrupted. Last checkpoint: ") and "--resume" in last
    named = Path(last.split("Last checkpoint: ")[1].split(";")[0])
    assert named.parent == out / "checkpoints" and (named / "trainer_state.json").is_file()
    assert (out / "notes.txt").read_text() == "mine" and not list((out / "checkpoints").glob(".tmp-*"))


def test_sigterm_saves_the_step_it_finished_exits_143_and_resume_ends_as_the_whole_run(pair, tmp_path):
    """SIGTERM (a preemption notice) between periodic saves: the run finishes its step, checkpoints
    it, says where in one line and exits 143; --resume ends with the uninterrupted run's student."""
    from safetensors.torch import load_file

    out = tmp_path / "stopped"
    argv = common(pair, out, "--max-steps=40", "--save-every=5")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "taid_vlm.cli"] + argv, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def logged() -> int:
        rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        return json.loads(rows[-1])["step"] if rows else 0

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # stop it 1-3 steps after a periodic save
        if logged() > 5 and logged() % 5 in (1, 2, 3):
            proc.send_signal(signal.SIGSTOP)
            if logged() % 5 in (1, 2, 3):
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    at = logged()
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    last = err.rstrip("\n").splitlines()[-1]
    stop = int(last.split(" after step ")[1].split(":")[0])
    assert stop in (at, at + 1) and stop % 5 != 0 and 5 < stop < 40, (at, last)
    named = out / "checkpoints" / f"step-{stop:07d}"
    assert last == (f"taid-vlm distill: stopped by SIGTERM after step {stop}: checkpoint {named}; continue with "
                    "the same command plus --resume")
    assert (named / "trainer_state.json").is_file() and not (out / "student").exists()
    assert "Traceback" not in err

    assert main(argv + ["--resume"]) == 0
    assert main(common(pair, tmp_path / "whole", "--max-steps=40", "--save-every=5")) == 0
    a = load_file(str(out / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "whole" / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))


# ---- the output directory's life, without models ----------------------------------------------------------


def run_config(out: Path, **values):
    from taid_vlm.train.config import load_config

    return load_config(None, dict(student="s", teacher="t", data="d", output=str(out), **values))


def test_claim_moves_aside_and_abandon_restores_exactly(tmp_path):
    from taid_vlm.train.output import RunOutput

    out = tmp_path / "out"
    (out / "student").mkdir(parents=True)
    (out / "student" / "model.safetensors").write_bytes(b"old weights")
    (out / "config.yaml").write_text("old: run\n")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    run = RunOutput(run_config(out, overwrite=True))
    run.claim()
    assert not (out / "student").exists() and (out / "notes.txt").exists()  # only the run's own files move
    (out / "metrics.jsonl").write_text("new run, failed\n")
    run.abandon()
    assert snapshot(out) == before and not list(out.glob(".replaced-*"))
    # after the first applied step the old run goes and config.yaml is the new one
    run = RunOutput(run_config(out, overwrite=True))
    run.claim()
    run.started("new: run\n")
    assert (out / "config.yaml").read_text() == "new: run\n" and not (out / "student").exists()
    assert not list(out.glob(".replaced-*")) and (out / "notes.txt").read_text() == "mine"


def test_a_run_set_aside_by_a_killed_overwrite_is_pointed_out(tmp_path):
    from taid_vlm.train.output import RunOutput

    out = tmp_path / "out"
    (out / ".replaced-20260101-1" / "student").mkdir(parents=True)
    with pytest.warns(UserWarning, match="killed before its first step"):
        RunOutput(run_config(out))


def test_a_ctrl_c_during_a_checkpoint_waits_until_the_checkpoint_is_written():
    """torch.distributed.checkpoint wraps what is raised inside it: an interrupt there would end as an
    internal error with a half-written folder, so the save holds it and raises it afterwards."""
    from taid_vlm.train.stopping import interrupts_deferred

    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            finished.append(True)  # reached: the interrupt did not cut the block short
    assert finished == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
