"""Losses as objects: what they declare, the state they own, and a loss defined only here
training through `taid-vlm distill` with nothing changed under taid_vlm/train/."""

import ast
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from composed_pair import save_composed_pair
from taid_vlm.cli import main
from taid_vlm.losses import (CTKD, LOSS_NAMES, LOSSES, TAID, Loss, Param, Range, Setting, UnknownLoss, build_loss,
                             divergence, loss_class)
from taid_vlm.train import ConfigError, load_config
from taid_vlm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
BASE = {"student": "s", "teacher": "t", "data": "d", "output": "o"}


class ScaledForwardKL(Loss):
    """A loss defined outside the package: forward KL times ``scale`` (a parameter of its math),
    counting every ``every``-th applied step (a setting of its own)."""

    params = {"scale": Param(1.0, Range(0.0, 10.0), help="factor on the forward KL")}
    settings = {"every": Setting(1, Range(1.0), type=int, help="count every N-th applied step")}

    def __init__(self, **params):
        super().__init__(**params)
        self.applied_steps = 0
        self.every = 1

    @classmethod
    def from_settings(cls, values, *, temperature=1.0, total_steps=1):
        loss = super().from_settings(values, temperature=temperature, total_steps=total_steps)
        loss.every = values["every"]
        return loss

    def per_token(self, student, teacher, *, temperature=1.0, labels=None):
        log_q = F.log_softmax(student / temperature, dim=-1)
        log_p = F.log_softmax(teacher / temperature, dim=-1)
        return self.values["scale"] * (log_p.exp() * (log_p - log_q)).sum(-1)

    def on_step(self, step, total_steps, kd_loss):
        self.applied_steps += (step + 1) % self.every == 0

    def metrics(self):
        return {"applied_steps": float(self.applied_steps), "scale": self.values["scale"]}

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
    settings = {**TAID.defaults(), "alpha_per_run": 2.0}
    assert settings == dict(t_start=0.4, t_end=1.0, alpha=5e-4, beta=0.99, adaptive=True, alpha_per_run=2.0)
    first = TAID.from_settings(settings, total_steps=10)
    assert first.metrics() == {"t": 0.4, "t_linear": 0.4}
    for step, value in enumerate([3.0, 2.5, 2.0]):
        first.on_step(step, 10, value)
    second = TAID.from_settings(settings, total_steps=10)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # checkpoints hold it as JSON
    for step, value in enumerate([1.9, 1.7], start=3):
        first.on_step(step, 10, value)
        second.on_step(step, 10, value)
    assert second.t == first.t > second.schedule.t_start
    assert first.step_metrics({"t": 0.5}) == {"t": 0.5, "t_next": first.t}


def test_ctkd_owns_its_temperature_and_ramp():
    loss = CTKD.from_settings({"lambda_max": 1.0}, temperature=2.0, total_steps=4)
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
    with pytest.raises(ConfigError, match="taid_beta of loss 'taid' must be in \\[0, 1\\) \\(a momentum\\), got 1.0"):
        load_config(None, dict(BASE, taid_beta=1.0))
    with pytest.raises(ConfigError, match="taid.beta of loss 'taid' must be in \\[0, 1\\) \\(a momentum\\), got 1.0"):
        load_config(None, BASE, ["taid.beta=1"])
    with pytest.raises(ConfigError, match="scaled_forward_kl.every of loss '.*ScaledForwardKL' must be >= 1, got 0"):
        load_config(None, dict(BASE, loss=CUSTOM), ["scaled_forward_kl.every=0"])
    with pytest.raises(ConfigError, match="scaled_forward_kl.every expects int, got 'two'"):
        load_config(None, dict(BASE, loss=CUSTOM), ["scaled_forward_kl.every=two"])
    with pytest.raises(ConfigError, match="unknown key 'scaled_forward_kl.evry': loss '.*ScaledForwardKL' takes scale, every"):
        load_config(None, dict(BASE, loss=CUSTOM), ["scaled_forward_kl.evry=2"])
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


def test_nothing_under_train_switches_on_a_loss_name_or_names_a_loss_setting():
    names = re.compile(r"""(==|!=)\s*["'](sft|taid|ctkd|dkd|fkl|rkl)["']|uses_teacher|parts_has|_loss_params|run\.ctkd|run\.schedule""")
    settings = re.compile(r"""["']t["']|\bfinal_t\b|\bt_start\b|\bt_end\b|\btaid_|\bctkd_lambda""")
    offenders = []
    for path in sorted((ROOT / "taid_vlm" / "train").glob("*.py")):
        code = path.read_text()
        tree = ast.parse(code)
        for node in [tree, *ast.walk(tree)]:  # docstrings may document the flat aliases (config.py)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node, clean=False):
                code = code.replace(ast.get_docstring(node, clean=False), "", 1)
        offenders += [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(code.splitlines(), 1)
                      if names.search(line) or settings.search(line.split("#")[0])]
    assert offenders == []


def test_a_loss_declares_each_setting_once_and_every_spelling_reaches_it(tmp_path):
    """Recipe section, dotted override, flag, flat alias and loss_params: one declaration, one value."""
    from taid_vlm.cli import build_parser, parse_command_line
    from taid_vlm.train.config import loss_setting_values

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"loss: {CUSTOM}\nscaled_forward_kl: {{scale: 2, every: 3}}\n")
    nested = load_config(recipe, BASE)
    dotted = load_config(None, dict(BASE, loss=CUSTOM), ["scaled_forward_kl.scale=2", "scaled_forward_kl.every=3"])
    aliased = load_config(None, dict(BASE, loss=CUSTOM), ["loss_params.scale=2", "scaled_forward_kl.every=3"])
    argv = ["distill", "--config", str(recipe), "--scaled-forward-kl.every", "3", "--scaled-forward-kl.scale=2"]
    parser = build_parser(argv)  # the loss the command line names gets its flags
    args = parse_command_line(parser, argv)
    flagged = load_config(args.config, dict(BASE, **loss_setting_values(args)), args.overrides)
    assert nested == dotted == aliased == flagged
    assert nested.settings_of() == {"scale": 2.0, "every": 3} and nested.make_loss().every == 3
    saved = tmp_path / "config.yaml"
    nested.save(saved)  # the resolved recipe: the loss's whole section, read back the same
    assert yaml.safe_load(saved.read_text())["scaled_forward_kl"] == {"scale": 2.0, "every": 3}
    assert load_config(saved) == nested
    # TAID's: the section, its flags and the flat keys of older configs
    old = load_config(None, dict(BASE, t_start=0.2, taid_alpha=1e-3, taid_adaptive=False))
    new = load_config(None, BASE, ["taid.t_start=0.2", "taid.alpha=1e-3", "taid.adaptive=false"])
    argv = ["distill", "--taid.t-start", "0.2", "--taid-alpha", "1e-3", "--no-taid.adaptive"]
    args = parse_command_line(build_parser(argv), argv)
    assert old == new == load_config(None, dict(BASE, **loss_setting_values(args)))
    assert new.settings_of()["t_start"] == 0.2 and new.make_loss().schedule.alpha == 1e-3
    assert load_config(None, BASE).settings_of() == TAID.defaults() and TAID.defaults()["t_start"] == 0.4
    help_text = build_parser().format_help() + parser._subparsers._group_actions[0].choices["distill"].format_help()
    assert "--taid.t-start" in help_text and "--scaled-forward-kl.every" in help_text and "--t-start" in help_text


# ---- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_composed_pair(tmp_path_factory.mktemp("pair"), 16, 2)


def cli_args(pair: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", f"--teacher={pair / 'teacher'}", f"--student={pair / 'student'}",
            f"--data={pair / 'shapes' / 'train.jsonl'}", f"--output={out}", "--batch-size=4", "--max-steps=3",
            "--save-every=1", "--keep-checkpoints=0", "--log-every=1", "--no-progress", "--seed=1", *extra]


def test_a_loss_defined_only_in_this_file_trains_through_taid_vlm_distill(pair, tmp_path):
    """Its parameter in the YAML recipe, its own setting as a flag; nothing under taid_vlm/train/ knows it."""
    out = tmp_path / "custom"
    recipe = tmp_path / "custom.yaml"
    recipe.write_text(f"loss: {CUSTOM}\ndistil_ratio: 0.5\nscaled_forward_kl:\n  scale: 2\n")
    assert main(cli_args(pair, out, f"--config={recipe}", "--scaled-forward-kl.every", "2")) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["applied_steps"] for r in rows] == [0.0, 0.0, 1.0]  # its metrics(), logged each step: every 2nd step
    assert all(r["scale"] == 2.0 for r in rows) and "t" not in rows[0]
    assert all(math.isfinite(r["kd_loss"]) and r["kd_loss"] > 0 for r in rows)
    assert rows[0]["loss"] == pytest.approx(0.5 * rows[0]["kd_loss"] + 0.5 * rows[0]["ce_loss"], rel=1e-6)
    state = json.loads((out / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["loss_state"] == {"applied_steps": 1}  # its state_dict went into the checkpoint
    assert yaml.safe_load((out / "config.yaml").read_text())["scaled_forward_kl"] == {"scale": 2.0, "every": 2}
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
    # ... and their config.yaml had the flat keys (t_start, taid_alpha, ...), loss_params and no taid section
    saved_file = resumed / "checkpoints" / "step-0000001" / "config.yaml"
    saved = yaml.safe_load(saved_file.read_text())
    section = saved.pop("taid")
    saved.update(loss_params={}, **{TAID.settings[k].alias: v for k, v in section.items()})
    saved_file.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert main(cli_args(pair, resumed, "lr=0.003", "--resume", "taid.t_start=0.3")) == 2  # a changed setting: refused
    assert main(cli_args(pair, resumed, "lr=0.003", "--resume")) == 0
    a, b = load_file(str(full / "student" / "model.safetensors")), load_file(str(resumed / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    t_full = [r["t"] for r in read_metrics(full / "metrics.jsonl")]
    t_resumed = [r["t"] for r in read_metrics(resumed / "metrics.jsonl")]
    assert t_resumed[-2:] == t_full[-2:] and t_full[-1] > t_full[0]


def test_docs_list_every_registered_loss_and_its_settings():
    rows = [line for line in (ROOT / "docs/LOSSES.md").read_text().splitlines() if line.startswith("| `")]
    for name, cls in LOSSES.items():
        row = next((r for r in rows if f"`{name}`" in r.split("|")[1]), None)
        assert row is not None, name
        named = set(re.findall(r"`(\w+)`", row.split("|")[2]))
        assert named >= set(cls.declared()), (name, named)
    aliases = {s.alias for cls in LOSSES.values() for s in cls.declared().values() if s.alias}
    assert all(f"`{alias}`" in (ROOT / "docs/LOSSES.md").read_text() for alias in aliases)
