"""The command line's grammar: flags come from the config dataclasses (one declaration per
setting), every command takes ``--output``, and distill's ``key=value`` overrides may stand
anywhere on the line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from composed_pair import save_text_pair

from taid_vlm.cli import build_parser, main, parse_command_line
from taid_vlm.eval.command import config_from_args
from taid_vlm.eval.config import EvalConfig
from taid_vlm.flags import add_dataclass_arguments, flag, flag_fields, values_from
from taid_vlm.teacher_cache.config import TeacherCacheConfig
from taid_vlm.train.config import ConfigError, DistillConfig, load_config


def parse(argv: list[str]) -> argparse.Namespace:
    return parse_command_line(build_parser(), argv)


def distill_config(argv: list[str]):
    args = parse(["distill", *argv])
    return load_config(args.config, values_from(args, DistillConfig), args.overrides)


REQUIRED = ["--student", "s", "--teacher", "t", "--data", "d.jsonl"]


# ---- key=value overrides anywhere ----------------------------------------------------------------------


def test_overrides_before_and_after_flags_give_the_same_config(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: gjsd\nteacher: t\nsave_every: 100\n")
    after = distill_config(["--config", str(recipe), *REQUIRED, "--output", "run", "save_every=5",
                            "loss_params.beta=0.3"])
    before = distill_config(["save_every=5", "loss_params.beta=0.3", "--config", str(recipe), *REQUIRED,
                             "--output", "run"])
    between = distill_config(["--config", str(recipe), "save_every=5", *REQUIRED, "loss_params.beta=0.3",
                              "--output", "run"])
    assert after.save_every == before.save_every == between.save_every == 5
    assert after.loss_settings == before.loss_settings == between.loss_settings == {"gjsd": {"beta": 0.3}}
    assert after == before == between and after.loss == "gjsd"


def test_overrides_keep_their_order_and_win_over_flags():
    config = distill_config([*REQUIRED, "save_every=5", "--output", "run", "--save-every", "7", "save_every=9"])
    assert config.save_every == 9  # the last override, although written before a flag setting it to 7


def test_a_stray_word_is_refused_not_ignored(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["distill", "save_every=5", *REQUIRED, "--output", "run", "oops"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: oops" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="override 'oops' is not key=value"):
        distill_config([*REQUIRED, "--output", "run", "oops"])
    with pytest.raises(SystemExit):  # a command without overrides takes no key=value words
        parse(["data", "shapes", "--output", "x", "n_train=3"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    return save_text_pair(tmp_path_factory.mktemp("grammar"), 8)


def test_distill_runs_with_overrides_after_output(pair, tmp_path, capsys):
    """The case the issue names: ``--output DIR save_every=5`` used to be refused as unrecognized."""
    out = tmp_path / "run"
    argv = ["distill", "--teacher", str(pair / "teacher"), "--student", str(pair / "student"),
            "--data", str(pair / "shapes" / "train.jsonl"), "--batch-size", "4", "--no-progress",
            "--output", str(out), "max_steps=2", "save_every=1", "loss=fkl"]
    assert main(argv) == 0, capsys.readouterr().err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["max_steps"], saved["save_every"], saved["loss"]) == (2, 1, "fkl")
    assert (out / "student").is_dir() and len(list((out / "checkpoints").iterdir())) == 2  # save_every=1


# ---- one declaration per setting ---------------------------------------------------------------------------


def test_every_distill_setting_is_a_flag_named_after_its_field():
    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["distill"]._actions}
    for f in dataclasses.fields(DistillConfig):
        if f.name in ("loss_settings", "teachers"):
            assert f.name not in actions  # a mapping: --gjsd.beta 0.3 sets one loss setting, teachers.a=DIR one route
            continue
        assert "--" + f.name.replace("_", "-") in actions[f.name].option_strings, f.name
        assert actions[f.name].default is None  # not given = the recipe's value stands
    args = parse(["distill", "--resume"])
    assert args.resume == "auto"  # the optional value declared in the field's metadata


def test_eval_flags_are_evalconfig_fields_with_its_defaults():
    args = parse(["eval", "--model", "m", "--data", "d.jsonl", "--output", "o"])
    assert config_from_args(args) == EvalConfig(models=["m"], data=["d.jsonl"], output="o")
    names = {f.name for f in flag_fields(EvalConfig)}
    assert names == {f.name for f in dataclasses.fields(EvalConfig)}
    args = parse(["eval", "--model", "a", "--model", "b", "--label", "A", "--label", "B", "--data", "q.json",
                  "a.json", "--benchmark", "vqav2", "--output", "o", "--images", "img", "--column",
                  "answers=x", "--quiet", "--batch-size", "3", "--vqa-rules", "lmms-eval"])
    config = config_from_args(args)
    assert (config.models, config.labels, config.data, config.image_dir) == (["a", "b"], ["A", "B"],
                                                                             ["q.json", "a.json"], "img")
    assert (config.progress, config.batch_size, config.vqa_rules) == (False, 3, "lmms-eval")
    assert config.data_options == {"image_dir": "img", "columns": {"answers": "x"}}


def test_teacher_cache_flags_are_its_config_fields_with_their_defaults():
    args = parse(["teacher-cache", "--teacher", "t", "--data", "d.jsonl", "--output", "c"])
    assert TeacherCacheConfig(**values_from(args, TeacherCacheConfig)) == TeacherCacheConfig(teacher="t", data="d.jsonl",
                                                                                         output="c")
    args = parse(["teacher-cache", "--teacher", "t", "--data", "d", "--output", "c", "--top-k", "8", "--no-progress",
                  "--logit-dtype", "float16", "--max-length", "128"])
    config = TeacherCacheConfig(**values_from(args, TeacherCacheConfig))
    assert (config.top_k, config.progress, config.logit_dtype, config.max_length) == (8, False, "float16", 128)


def test_the_flag_helper_reads_types_defaults_and_metadata(capsys):
    @dataclasses.dataclass
    class Settings:
        size: int = 4
        rate: float | None = None
        fast: bool = False
        mode: str = dataclasses.field(default="a", metadata=flag("--mode", "-m", choices=("a", "b"), help="how"))
        weights: dict[str, float] = dataclasses.field(default_factory=dict)
        hidden: str = dataclasses.field(default="x", metadata=flag(cli=False))

    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_arguments(parser, Settings, layered=False)
    assert [f.name for f in flag_fields(Settings)] == ["size", "rate", "fast", "mode"]
    assert Settings(**values_from(parser.parse_args([]), Settings)) == Settings()
    got = Settings(**values_from(parser.parse_args(["--size", "7", "--rate", "0.5", "--fast", "-m", "b"]), Settings))
    assert got == Settings(size=7, rate=0.5, fast=True, mode="b")
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "seven"])
    assert "argument --size: invalid int value: 'seven'" in capsys.readouterr().err
    layered = argparse.ArgumentParser(prog="t")
    add_dataclass_arguments(layered, Settings, layered=True)
    assert values_from(layered.parse_args([]), Settings) == {"size": None, "rate": None, "fast": None, "mode": None}
    assert layered.parse_args(["--size", "7", "--no-fast"]).size == "7"  # text: the config coerces it
    assert layered.parse_args(["--no-fast"]).fast is False
    with pytest.raises(TypeError, match="unsupported"):
        flag(colour="red")


# ---- --output everywhere -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["data", "shapes"], ["distill"], ["teacher-cache", "--teacher", "t", "--data", "d"],
    ["eval", "--model", "m", "--data", "d"], ["demo"], ["teacher-server", "--teacher", "t"],
])
def test_every_command_takes_output(argv):
    assert parse([*argv, "--output", "somewhere"]).output == "somewhere"


@pytest.mark.parametrize("argv", [["data", "shapes"], ["demo"]])
def test_out_stays_an_alias_where_it_was(argv):
    assert parse([*argv, "--out", "there"]).output == "there"
