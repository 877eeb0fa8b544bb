"""Losses as objects: what they declare, the state they own, and a loss defined only here
training through `taid-vlm distill` with nothing changed under taid_vlm/train/."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from composed_pair import save_composed_pair
from taid_vlm.cli import main
from taid_vlm.losses import (CTKD, LOSS_NAMES, LOSSES, TAID, Loss, Param, Range, UnknownLoss, build_loss, divergence,
                             loss_class)
from taid_vlm.train import ConfigError, load_config
from taid_vlm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
BASE = {"student": "s", "teacher": "t", "data": "d", "output": "o"}


class ScaledForwardKL(Loss):
    """A loss defined outside the package: forward KL times ``scale``, counting its applied steps."""

    params = {"scale": Param(1.0, Range(0.0, 10.0))}

    def __init__(self, **params):
        super().__init__(**params)
        self.applied_steps = 0

    def per_token(self, student, teacher, *, temperature=1.0, labels=None):
        log_q = F.log_softmax(student / temperature, dim=-1)
        log_p = F.log_softmax(teacher / temperature, dim=-1)
        return self.values["scale"] * (log_p.exp() * (log_p - log_q)).sum(-1)

    def on_step(self, step, total_steps, kd_loss):
        self.applied_steps += 1

    def snapshot(self):
        return {"applied_steps": float(self.applied_steps)}

    def state_dict(self):
        return {"applied_steps": self.applied_steps}

    def load_state_dict(self, state):
        self.applied_steps = state["applied_steps"]


CUSTOM = f"{__name__}:ScaledForwardKL"


# ---- what the classes declare ---------------------------------------------------------------------


def test_every_registered_loss_declares_what_it_needs():
    assert set(LOSS_NAMES) == {"fkl", "rkl", "tvd", "gjsd", "skew_fkl", "skew_rkl", "akl", "ctkd", "dkd", "taid", "sft"}
    for name, cls in LOSSES.items():
        assert issubclass(cls, Loss) and cls.name == name and loss_class(name) is cls
    assert [n for n, c in LOSSES.items() if not c.needs_teacher] == ["sft"]
    assert sorted(n for n, c in LOSSES.items() if c.needs_labels) == ["dkd", "sft"]
    assert [n for n, c in LOSSES.items() if c.owns_parameters()] == ["ctkd"]
    assert build_loss("fkl").interpolation() == 1.0 and build_loss("taid", t=0.3).interpolation() == 0.3
    assert build_loss("rkl").interpolation() is None


def test_taid_owns_its_schedule_and_its_state_restores_it_exactly():
    settings = dict(temperature=1.0, t_start=0.4, t_end=1.0, taid_alpha=5e-4, taid_beta=0.99, taid_adaptive=True,
                    taid_alpha_per_run=2.0)
    first = TAID.from_settings(settings, {}, total_steps=10)
    assert first.snapshot() == {"t": 0.4, "t_linear": 0.4}
    for step, value in enumerate([3.0, 2.5, 2.0]):
        first.on_step(step, 10, value)
    second = TAID.from_settings(settings, {}, total_steps=10)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # checkpoints hold it as JSON
    for step, value in enumerate([1.9, 1.7], start=3):
        first.on_step(step, 10, value)
        second.on_step(step, 10, value)
    assert second.t == first.t > second.schedule.t_start
    assert first.step_metrics({"t": 0.5}) == {"t": 0.5, "t_next": first.t}


def test_ctkd_owns_its_temperature_and_ramp():
    loss = CTKD.from_settings({"temperature": 2.0, "ctkd_lambda_max": 1.0}, {}, total_steps=4)
    assert set(loss.modules()) == {"ctkd_temperature"}
    temperature = loss.temperature(0, 4)
    assert isinstance(temperature, torch.Tensor) and temperature.requires_grad
    assert float(temperature.detach()) == pytest.approx(2.001, rel=1e-4)
    assert loss.step_metrics({})["temperature"] == pytest.approx(2.001, rel=1e-4)
    assert build_loss("ctkd").temperature(0, 4) == 1.0  # built directly: the temperature it is given


def test_config_validation_comes_from_the_loss_classes():
    with pytest.raises(ConfigError, match=r"loss_params.scale of loss '.*ScaledForwardKL' must be in \[0, 10\], got 11"):
        load_config(None, dict(BASE, loss=CUSTOM), ["loss_params.scale=11"])
    with pytest.raises(ConfigError, match=r"loss_params.skew is not a parameter of loss '.*ScaledForwardKL'; it takes scale"):
        load_config(None, dict(BASE, loss=CUSTOM), ["loss_params.skew=0.1"])
    assert load_config(None, dict(BASE, loss=CUSTOM), ["loss_params.scale=2"]).make_loss().values == {"scale": 2.0}
    with pytest.raises(ConfigError, match="taid_beta must be in \\[0, 1\\) \\(a momentum\\), got 1.0"):
        load_config(None, dict(BASE, taid_beta=1.0))
    with pytest.raises(ConfigError, match="loss_params.t is not a parameter of loss 'taid'.*schedule"):
        load_config(None, BASE, ["loss_params.t=0.5"])
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        load_config(None, dict(BASE, loss="no_such_module_xyz:Loss"))
    with pytest.raises(ConfigError, match="'math' .*not a subclass of taid_vlm.losses.Loss"):
        load_config(None, dict(BASE, loss=f"{__name__}:math"))
    with pytest.raises(UnknownLoss, match="loss 'kl' is not one of fkl"):
        loss_class("kl")
    assert load_config(None, dict(BASE, teacher=None, loss="sft")).needs_teacher is False


def test_a_loss_module_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_loss_module_xyz.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="importing module 'broken_loss_module_xyz' failed with RuntimeError: boom"):
        load_config(None, dict(BASE, loss="broken_loss_module_xyz:Loss"))


def test_a_custom_loss_computes_through_the_engines():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    assert divergence(ScaledForwardKL(scale=2.0), zs, zt).item() == pytest.approx(2 * divergence("fkl", zs, zt).item(), rel=1e-6)


def test_nothing_under_train_switches_on_a_loss_name():
    pattern = re.compile(r"""(==|!=)\s*["'](sft|taid|ctkd|dkd|fkl|rkl)["']|uses_teacher|parts_has|_loss_params|run\.ctkd|run\.schedule""")
    offenders = [f"{path.name}:{i}: {line.strip()}" for path in sorted((ROOT / "taid_vlm" / "train").glob("*.py"))
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


# ---- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_composed_pair(tmp_path_factory.mktemp("pair"), 16, 2)


def cli_args(pair: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", f"--teacher={pair / 'teacher'}", f"--student={pair / 'student'}",
            f"--data={pair / 'shapes' / 'train.jsonl'}", f"--output={out}", "--batch-size=4", "--max-steps=3",
            "--save-every=1", "--keep-checkpoints=0", "--log-every=1", "--no-progress", "--seed=1", *extra]


def test_a_loss_defined_only_in_this_file_trains_through_taid_vlm_distill(pair, tmp_path):
    out = tmp_path / "custom"
    assert main(cli_args(pair, out, f"--loss={CUSTOM}", "--distil-ratio=0.5", "loss_params.scale=2")) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["applied_steps"] for r in rows] == [0.0, 1.0, 2.0]  # its snapshot, logged each step
    assert all(math.isfinite(r["kd_loss"]) and r["kd_loss"] > 0 for r in rows)
    assert rows[0]["loss"] == pytest.approx(0.5 * rows[0]["kd_loss"] + 0.5 * rows[0]["ce_loss"], rel=1e-6)
    state = json.loads((out / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["loss_state"] == {"applied_steps": 3}  # its state_dict went into the checkpoint
    assert (out / "student" / "model.safetensors").is_file()


def test_resume_reads_checkpoints_written_before_loss_objects(pair, tmp_path):
    """Older checkpoints kept TAID's schedule under 'schedule'; resuming from one is still exact."""
    full = tmp_path / "full"
    assert main(cli_args(pair, full, "lr=0.003")) == 0
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoints" / "step-0000001", resumed / "checkpoints" / "step-0000001")
    shutil.copy(full / "checkpoints" / "step-0000001" / "config.yaml", resumed / "config.yaml")
    state_file = resumed / "checkpoints" / "step-0000001" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["schedule"] = state.pop("loss_state")
    state_file.write_text(json.dumps(state))
    assert main(cli_args(pair, resumed, "lr=0.003", "--resume")) == 0
    a, b = load_file(str(full / "student" / "model.safetensors")), load_file(str(resumed / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    t_full = [r["t"] for r in read_metrics(full / "metrics.jsonl")]
    t_resumed = [r["t"] for r in read_metrics(resumed / "metrics.jsonl")]
    assert t_resumed[-2:] == t_full[-2:] and t_full[-1] > t_full[0]
