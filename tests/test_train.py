"""The distillation loop end to end on tiny models: outputs, normalisation, resume, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from composed_pair import save_composed_pair
from taid_vlm.train import ConfigError, DistillConfig, distill, load_config
from taid_vlm.train.checkpoint import checkpoint_weights
from taid_vlm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vlm_pair(tmp_path_factory):
    """Shapes data plus a composed teacher (16 image tokens) and student (4 image tokens)."""
    root = tmp_path_factory.mktemp("vlm")
    return save_composed_pair(root, 48, 4)


def config_for(root: Path, out: str, **overrides) -> DistillConfig:
    values = dict(teacher=str(root / "teacher"), student=str(root / "student"), data=str(root / "shapes" / "train.jsonl"),
                  output=str(root / out), max_steps=4, batch_size=4, save_every=100, log_every=1, progress=False, seed=3)
    values.update(overrides)
    return load_config(None, values)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """A saved student's weights, or a checkpoint's (DCP)."""
    if (path / "trainer_state.json").is_file():
        return checkpoint_weights(path)
    return load_file(str(path / "model.safetensors"))


# ---- config ---------------------------------------------------------------------------------------


def test_scientific_notation_without_a_dot_is_a_number_everywhere(tmp_path):
    """PyYAML (YAML 1.1) reads '2e-5' as a string; a user writing lr: 2e-5 means a number."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: s\nteacher: t\ndata: d\noutput: o\nlr: 2e-5\ntaid_alpha: 5e-4\nloss: gjsd\n")
    config = load_config(recipe, {}, [])
    assert (config.lr, config.settings_of("taid")["alpha"]) == (2e-5, 5e-4)
    config = load_config(recipe, {"lr": "3e-4"}, ["loss_params.beta=5e-1", "warmup_steps=10"])
    assert config.lr == 3e-4 and config.loss_settings == {"gjsd": {"beta": 0.5}, "taid": {"alpha": 5e-4}}
    assert config.warmup_steps == 10
    with pytest.raises(ConfigError, match="lr expects float"):
        load_config(recipe, {"lr": "fast"}, [])


def test_config_precedence_yaml_then_flags_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("student: s\nteacher: t\ndata: d\noutput: o\nlr: 0.5\nmax_steps: 7\nloss: gjsd\n")
    config = load_config(recipe, {"lr": "0.25", "loss": None}, ["lr=0.125", "loss_params.beta=0.3", "chunked=false"])
    assert config.lr == 0.125 and config.max_steps == 7 and config.loss == "gjsd"
    assert config.settings_of() == {"beta": 0.3} and config.chunked is False
    taid = config.settings_of("taid")
    assert config.weight_decay == 0.01 and taid["t_start"] == 0.4 and taid["alpha"] == 5e-4  # paper defaults


def test_config_errors_name_the_key(tmp_path):
    base = {"student": "s", "teacher": "t", "data": "d", "output": "o"}
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        load_config(None, base, ["learning_rate=1"])
    with pytest.raises(ConfigError, match="max_steps expects int"):
        load_config(None, base, ["max_steps=ten"])
    with pytest.raises(ConfigError, match="loss 'kl' is not one of"):
        load_config(None, dict(base, loss="kl"))
    with pytest.raises(ConfigError, match="needs a teacher"):
        load_config(None, dict(base, teacher=None))
    assert load_config(None, dict(base, teacher=None, loss="sft")).needs_teacher is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


# ---- a run end to end -----------------------------------------------------------------------------


def test_vlm_distill_end_to_end(vlm_pair):
    config = config_for(vlm_pair, "run", max_steps=5)
    result = distill(config)
    rows = read_metrics(vlm_pair / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for key in ("loss", "lr", "t", "t_linear", "tokens_per_s", "tokens"):
        assert all(key in r for r in rows), key
    ts = [r["t"] for r in rows]
    assert ts[0] == pytest.approx(0.4) and all(b >= a for a, b in zip(ts, ts[1:]))
    assert all(r["t"] >= r["t_linear"] - 1e-12 for r in rows)
    assert result.final_metrics["t"] == pytest.approx(1.0) and set(result.final_metrics) == {"t", "t_linear"}
    resolved = (vlm_pair / "run" / "config.yaml").read_text()
    assert "loss: taid" in resolved and "max_steps: 5" in resolved
    # the student loads in plain transformers (the composed model registers on import)
    from transformers import AutoModelForImageTextToText

    reloaded = AutoModelForImageTextToText.from_pretrained(result.student_dir)
    ranks = json.loads((vlm_pair / "run" / "ranks.json").read_text())
    assert len(ranks) == 1 and ranks[0]["t"] == pytest.approx(1.0)
    final = weights(vlm_pair / "run" / "checkpoints" / "step-0000005")
    assert torch.equal(reloaded.state_dict()["projector.0.weight"] if "projector.0.weight" in final else next(iter(reloaded.state_dict().values())),
                       final["projector.0.weight"] if "projector.0.weight" in final else next(iter(reloaded.state_dict().values())))


def test_refuses_output_dir_of_another_run_unless_told(vlm_pair):
    distill(config_for(vlm_pair, "taken", max_steps=1))
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        distill(config_for(vlm_pair, "taken", max_steps=1))
    distill(config_for(vlm_pair, "taken", max_steps=1, overwrite=True))


def test_gradient_accumulation_is_token_normalised_over_the_whole_step(vlm_pair):
    """One step of 2 micro-batches x 2 records == one step of 1 x 4 records (same records)."""
    distill(config_for(vlm_pair, "accum1", max_steps=1, batch_size=4, grad_accum=1, loss="fkl", lr=1e-2))
    distill(config_for(vlm_pair, "accum2", max_steps=1, batch_size=2, grad_accum=2, loss="fkl", lr=1e-2))
    a = weights(vlm_pair / "accum1" / "checkpoints" / "step-0000001")
    b = weights(vlm_pair / "accum2" / "checkpoints" / "step-0000001")
    start = weights(vlm_pair / "student")
    moved = max((a[k] - start[k]).abs().max().item() for k in a if k in start)
    assert moved > 1e-4  # the step did something
    # Adam's first step is ~lr * sign(grad): coordinates whose gradient is ~eps amplify float
    # noise, so compare against the size of the step, not against zero
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3 * moved
    la = read_metrics(vlm_pair / "accum1" / "metrics.jsonl")[0]["loss"]
    lb = read_metrics(vlm_pair / "accum2" / "metrics.jsonl")[0]["loss"]
    assert la == pytest.approx(lb, rel=1e-5)


def test_plain_and_chunked_paths_train_identically(vlm_pair):
    distill(config_for(vlm_pair, "chunked", max_steps=2, loss="taid"))
    distill(config_for(vlm_pair, "plain", max_steps=2, loss="taid", chunked=False))
    a = weights(vlm_pair / "chunked" / "checkpoints" / "step-0000002")
    b = weights(vlm_pair / "plain" / "checkpoints" / "step-0000002")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_every_loss_runs_and_ctkd_temperature_moves(vlm_pair):
    for loss in ("sft", "rkl", "dkd", "ctkd"):
        distill(config_for(vlm_pair, f"loss-{loss}", max_steps=2, loss=loss, distil_ratio=0.5 if loss == "rkl" else 1.0))
        rows = read_metrics(vlm_pair / f"loss-{loss}" / "metrics.jsonl")
        assert all(math.isfinite(r["loss"]) for r in rows)
    rkl = read_metrics(vlm_pair / "loss-rkl" / "metrics.jsonl")[0]
    assert rkl["loss"] == pytest.approx(0.5 * rkl["kd_loss"] + 0.5 * rkl["ce_loss"], rel=1e-6)
    temps = [r["temperature"] for r in read_metrics(vlm_pair / "loss-ctkd" / "metrics.jsonl")]
    assert (vlm_pair / "loss-ctkd" / "checkpoints" / "step-0000002" / "ctkd_temperature.pt").is_file()
    assert len(temps) == 2


def test_non_finite_loss_skips_steps_then_stops(vlm_pair, monkeypatch):
    import taid_vlm.train.loop as loop

    real = loop.training_loss

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(loop, "training_loss", poisoned)
    with pytest.warns(UserWarning, match="non-finite loss"):
        with pytest.raises(RuntimeError, match="max_bad_steps=2"):
            distill(config_for(vlm_pair, "nan", max_steps=6, max_bad_steps=2))
    rows = read_metrics(vlm_pair / "nan" / "metrics.jsonl")
    assert rows[-1]["skipped"] and rows[-1]["records"]
    assert not (vlm_pair / "nan" / "checkpoints").exists()


def test_teacher_generated_responses_are_cached_and_used(vlm_pair):
    config = config_for(vlm_pair, "seqkd", max_steps=1, responses="teacher", generation_max_new_tokens=4)
    distill(config)
    cache = vlm_pair / "seqkd" / "teacher_responses.jsonl"
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 48 and all(len(r["responses"]) >= 1 for r in rows)


def test_on_policy_batches_run(vlm_pair):
    distill(config_for(vlm_pair, "onpolicy", max_steps=2, on_policy=1.0, generation_max_new_tokens=3))
    rows = read_metrics(vlm_pair / "onpolicy" / "metrics.jsonl")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)


# ---- resume after SIGKILL -------------------------------------------------------------------------


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "taid_vlm.cli", "distill", *args]


def test_sigkill_then_resume_gives_the_same_student(vlm_pair):
    common = [f"--teacher={vlm_pair / 'teacher'}", f"--student={vlm_pair / 'student'}",
              f"--data={vlm_pair / 'shapes' / 'train.jsonl'}", "--batch-size=2", "--max-steps=10",
              "--save-every=2", "--keep-checkpoints=10", "--no-progress", "--seed=5", "lr=0.003"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    full = subprocess.run(_cli(common + [f"--output={vlm_pair / 'full'}"]), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    victim = subprocess.Popen(_cli(common + [f"--output={vlm_pair / 'killed'}"]), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    marker = vlm_pair / "killed" / "checkpoints" / "step-0000004" / "trainer_state.json"
    while not marker.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert marker.exists(), "the run never reached its step-4 checkpoint"
    assert not (vlm_pair / "killed" / "student").exists()

    resumed = subprocess.run(_cli(common + [f"--output={vlm_pair / 'killed'}", "--resume"]), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = weights(vlm_pair / "full" / "student")
    b = weights(vlm_pair / "killed" / "student")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    steps = [r["step"] for r in read_metrics(vlm_pair / "killed" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # no step logged twice


def test_student_built_from_parts_takes_the_teachers_tokenizer(vlm_pair):
    result = distill(config_for(vlm_pair, "from-spec", max_steps=1, student="composed:tiny?num_image_tokens=4&seed=9"))
    from transformers import AutoTokenizer

    student_tok = AutoTokenizer.from_pretrained(result.student_dir)
    teacher_tok = AutoTokenizer.from_pretrained(vlm_pair / "teacher")
    assert student_tok.get_vocab() == teacher_tok.get_vocab()


def test_rank_digest_covers_zero_dim_buffers():
    from taid_vlm.train.parallel import state_digest

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))  # num_batches_tracked: 0-dim int64
    before = state_digest(model.state_dict())
    model[1].num_batches_tracked += 1
    assert state_digest(model.state_dict()) != before
