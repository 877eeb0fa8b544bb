"""LoRA students through peft: the effective head in the chunked engine, merge, refusals, a run end to end."""

from __future__ import annotations

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

from composed_pair import save_text_pair
from taid_vlm.losses import EngineOptions
from taid_vlm.models import adapt, load
from taid_vlm.models.lora import LoraError, LoraSettings, apply_lora, effective_head
from taid_vlm.testing import build_tiny
from taid_vlm.train import ConfigError, distill, load_config
from taid_vlm.train.checkpoint import SHARDED_DIR, sharded_metadata
from taid_vlm.train.metrics import read_metrics
from taid_vlm.train.objective import training_loss

HEAD_TARGETS = "q_proj,v_proj,lm_head"
ROOT = Path(__file__).resolve().parents[1]


def lora_student(targets: str = HEAD_TARGETS, dropout: float = 0.0, seed: int = 2, **settings):
    """A tiny Qwen2 student (untied head) with adapters whose B is random, so W + scale * B @ A != W."""
    model, tokenizer = build_tiny("qwen2", hidden_size=16, seed=seed)
    student = adapt(model.float().train(), tokenizer)
    lora = apply_lora(student, LoraSettings(4, settings.pop("alpha", 8.0), dropout, targets), **settings)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for layer in lora.layers.values():
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.2)
    return student, lora


@pytest.fixture(scope="module")
def text_pair(tmp_path_factory):
    return save_text_pair(tmp_path_factory.mktemp("lora"), 16)


def run_config(root: Path, out: str, **overrides):
    values = dict(teacher=str(root / "teacher"), student=str(root / "student"), data=str(root / "shapes" / "train.jsonl"),
                  output=str(root / out), max_steps=3, batch_size=4, save_every=100, log_every=1, progress=False,
                  seed=3, lora_r=4, lora_target_modules=HEAD_TARGETS, lr=1e-2, loss="fkl")
    values.update(overrides)
    return load_config(None, values)


# ---- the effective head ----------------------------------------------------------------------------


def test_chunked_engine_sees_the_effective_head_values_and_gradients(text_pair):
    """A LoRA on lm_head: the chunked engine (hidden states + W + scale * B @ A) gives the loss and
    the adapters' gradients of the plain path (the model's own forward, peft's LoRA branch)."""
    student, lora = lora_student()
    teacher = load(text_pair / "teacher", role="teacher")
    from taid_vlm.data import load_records

    records = load_records(text_pair / "shapes" / "train.jsonl")[:4]
    teacher_out = teacher.response_outputs(records, return_hidden=False)
    head = student.lm_head()
    weight, _ = effective_head(head)
    assert weight.requires_grad and not head.get_base_layer().weight.requires_grad
    expected = head.get_base_layer().weight + 2.0 * head.lora_B["default"].weight @ head.lora_A["default"].weight
    assert torch.allclose(weight, expected, atol=1e-6)

    results = []
    for chunked in (True, False):
        student.model.zero_grad(set_to_none=True)
        out = student.response_outputs(records, return_hidden=chunked)
        assert (out.hidden is not None) == chunked
        loss = training_loss("fkl", out, teacher_out.to(dtype=torch.float32), num_tokens=out.num_tokens,
                             options=EngineOptions(chunked=chunked, chunk_size=5)).total
        loss.backward()
        grads = {n: p.grad.clone() for n, p in student.model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (chunked_loss, chunked_grads), (plain_loss, plain_grads) = results
    assert torch.allclose(chunked_loss, plain_loss, rtol=1e-5)
    assert chunked_grads.keys() == plain_grads.keys() and any("lm_head.lora_A" in n for n in chunked_grads)
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7)


def test_merged_state_is_peft_merge_and_unload():
    student, lora = lora_student()
    merged = lora.merged_state()
    reference = {k: v.clone() for k, v in lora.peft_model.merge_and_unload().state_dict().items()}
    assert merged.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6)
    assert (merged["lm_head.weight"] - lora_student()[0].model.lm_head.get_base_layer().weight).abs().max() > 1e-3


# ---- refusals ----------------------------------------------------------------------------------------


def test_lora_settings_that_cannot_work_are_refused_by_name():
    base = {"student": "s", "teacher": "t", "data": "d", "output": "o"}
    for values, message in (({"lora_r": -1}, "lora_r must be >= 1"), ({"lora_r": 4, "lora_dropout": 1.0}, "lora_dropout"),
                            ({"lora_r": 4, "lora_alpha": 0}, "lora_alpha must be > 0"),
                            ({"lora_r": 4, "lora_target_modules": "q_proj; v_proj"}, "comma-separated"),
                            ({"save_adapter_only": True}, "save_adapter_only=true keeps a LoRA adapter")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, dict(base, **values))
    config = load_config(None, dict(base, lora_r=8, mixed_precision="bf16", student_dtype="bfloat16"))
    assert config.lora_settings() == LoraSettings(8, None, 0.0, "all-linear")  # a bf16 base under fp32 adapters
    assert load_config(None, base, ["lora_r=2", "lora_target_modules=q_proj,v_proj"]).lora_settings().targets == ["q_proj", "v_proj"]


def test_a_lora_setting_the_student_cannot_take_is_one_cli_error_line_and_nothing_is_written(text_pair, capsys):
    from taid_vlm.cli import main

    out = text_pair / "refused"
    args = ["distill", f"--teacher={text_pair / 'teacher'}", f"--student={text_pair / 'student'}",
            f"--data={text_pair / 'shapes' / 'train.jsonl'}", f"--output={out}", "--no-progress", "lora_r=4",
            "lora_target_modules=q_proj,embed_tokens"]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # (transformers' loading bars go to stderr too)
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("taid-vlm distill: error: lora_target_modules=q_proj,embed_tokens: only linear")
    assert not out.exists()


def test_a_tied_head_dropout_on_the_head_and_non_linear_targets_are_refused():
    with pytest.raises(LoraError, match="lora_dropout=0.1 with lm_head.*chunked=false"):
        lora_student(dropout=0.1)
    lora_student(dropout=0.1, chunked=False)  # the plain path runs the head's own forward
    with pytest.raises(LoraError, match="only linear layers.*embed_tokens"):
        lora_student("q_proj,embed_tokens")
    with pytest.raises(LoraError, match="lora_target_modules=nothing_here"):
        lora_student("nothing_here")
    model, tokenizer = build_tiny("qwen2", hidden_size=16)
    model.lm_head.weight = model.model.embed_tokens.weight  # tie_word_embeddings
    with pytest.raises(LoraError, match="lm_head's weight is tied to model.embed_tokens.weight"):
        apply_lora(adapt(model, tokenizer), LoraSettings(4, target_modules="lm_head"))


# ---- a run end to end -----------------------------------------------------------------------------


def test_lora_run_trains_adapters_only_and_ships_a_merged_student_that_answers_like_the_adapter(text_pair):
    """The same 4 records every step: the loss falls, only the adapters move, and the merged
    student (plain transformers) and the adapter folder (peft over the base) answer alike."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = dict(data_limit=4, max_steps=6, lr=3e-2)
    merged_run = distill(run_config(text_pair, "merged", **common))
    adapter_run = distill(run_config(text_pair, "adapter", save_adapter_only=True, **common))
    losses = [r["loss"] for r in read_metrics(merged_run.output / "metrics.jsonl")]
    assert all(math.isfinite(x) for x in losses) and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0], losses

    merged = AutoModelForCausalLM.from_pretrained(merged_run.student_dir)
    assert merged.config.model_type == "qwen2" and not any("lora" in k for k in merged.state_dict())
    base = load_file(str(text_pair / "student" / "model.safetensors"))
    shipped = load_file(str(merged_run.student_dir / "model.safetensors"))
    moved = {k for k in base if not torch.equal(base[k], shipped[k])}
    assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight", "lm_head.weight")) for k in moved), moved

    assert (adapter_run.student_dir / "adapter_config.json").is_file()
    assert not (adapter_run.student_dir / "model.safetensors").exists()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(text_pair / "student"), adapter_run.student_dir)
    from taid_vlm.data import load_records

    records = load_records(text_pair / "shapes" / "train.jsonl")[:4]
    tokenizer = load(merged_run.student_dir).tokenizer
    answers = [adapt(model.eval(), tokenizer).generate(records, max_new_tokens=8)
               for model in (merged, with_adapter.base_model.model)]
    answers.append(load(adapter_run.student_dir).generate(records, max_new_tokens=8))  # what taid-vlm eval loads
    assert answers[0] == answers[1] == answers[2] and any(answers[0])


# ---- resume after SIGKILL, and two processes ------------------------------------------------------

RUN_FLAGS = ["--max-steps=16", "--save-every=2", "--keep-checkpoints=3", "--no-progress", "--log-every=1", "--seed=5",
             "--loss=fkl", "lr=0.01", "lora_r=4", f"lora_target_modules={HEAD_TARGETS}", "lora_dropout=0"]


def _cli_args(root: Path, out: str, batch_size: int) -> list[str]:
    return ["distill", f"--teacher={root / 'teacher'}", f"--student={root / 'student'}",
            f"--data={root / 'shapes' / 'train.jsonl'}", f"--output={root / out}", f"--batch-size={batch_size}", *RUN_FLAGS]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def whole_run(text_pair):
    """The uninterrupted one-process LoRA run the others must end at."""
    _in_process(_cli_args(text_pair, "whole", 4))
    return text_pair / "whole"


def _in_process(args: list[str]) -> None:
    """``taid-vlm ARGS`` in this process, on one thread like the subprocesses (the same float sums)."""
    from taid_vlm.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)


def test_lora_run_killed_with_sigkill_resumes_to_the_same_student(text_pair, whole_run):
    killed = text_pair / "killed"
    victim = subprocess.Popen([sys.executable, "-m", "taid_vlm.cli", *_cli_args(text_pair, "killed", 4)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step-0000002" / "trainer_state.json"
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert marker.exists(), "the run never reached its step-2 checkpoint"
    assert not (killed / "student").exists()
    index = sharded_metadata(marker.parent / SHARDED_DIR).state_dict_metadata  # the DCP checkpoint's tensors
    held = {k: m.size.numel() for k, m in index.items() if k.startswith("weights.")}  # the adapters alone
    assert held and all(".lora_A." in k or ".lora_B." in k for k in held), sorted(held)
    adam = [m.size.numel() for k, m in index.items() if k.startswith("optimizer.state.") and k.endswith(".exp_avg")]
    assert sum(adam) == sum(held.values())
    _in_process(_cli_args(text_pair, "killed", 4) + ["--resume"])
    a, b = load_file(str(whole_run / "student" / "model.safetensors")), load_file(str(killed / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 16


def test_lora_student_sharded_over_two_processes_trains_as_one_process(text_pair, whole_run):
    """distributed=fsdp over 2 gloo ranks (FSDP2 shards base and adapters alike; only the adapters
    get gradients and AdamW state): the merged student and the losses of the one-process run."""
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "taid_vlm.cli", *_cli_args(text_pair, "fsdp", 2), "--distributed=fsdp"],
                              env=_env(), capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    a, b = load_file(str(whole_run / "student" / "model.safetensors")), load_file(str(text_pair / "fsdp" / "student" / "model.safetensors"))
    start = load_file(str(text_pair / "student" / "model.safetensors"))
    assert a.keys() == b.keys() == start.keys()
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 1e-3 and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4 * moved
    losses = [[r["loss"] for r in read_metrics(run / "metrics.jsonl")] for run in (whole_run, text_pair / "fsdp")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert [r["sharded"] for r in json.loads((text_pair / "fsdp" / "ranks.json").read_text())] == [True, True]
