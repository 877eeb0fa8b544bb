"""Text-only LLM distillation runs on the very same core as the VLM path."""

import math

import pytest
import torch

from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.testing.tiny import save_tiny
from taid_vlm.train import distill, load_config
from taid_vlm.train.metrics import read_metrics


@pytest.fixture(scope="module")
def text_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    generate_shapes(root / "shapes", 40, 4, seed=0, text=True)
    save_tiny("qwen2", root / "teacher", hidden_size=64, num_layers=2, seed=1)
    save_tiny("qwen2", root / "student", hidden_size=32, num_layers=1, seed=2)
    return root


def run(root, out, **overrides):
    values = dict(teacher=str(root / "teacher"), student=str(root / "student"), data=str(root / "shapes" / "train.jsonl"),
                  output=str(root / out), batch_size=4, log_every=1, save_every=100, progress=False, lr=3e-3, warmup_steps=2)
    values.update(overrides)
    return distill(load_config(None, values))


def test_text_distillation_lowers_the_loss_and_saves_a_plain_transformers_model(text_pair):
    result = run(text_pair, "fkl", loss="fkl", max_steps=16)
    losses = [r["loss"] for r in read_metrics(text_pair / "fkl" / "metrics.jsonl")]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(result.student_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.student_dir)
    ids = tokenizer("Scene: a red circle", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_text_taid_runs_with_its_schedule(text_pair):
    run(text_pair, "taid", loss="taid", max_steps=4, t_start=0.2)
    rows = read_metrics(text_pair / "taid" / "metrics.jsonl")
    assert [r["t"] for r in rows] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert all(math.isfinite(r["loss"]) for r in rows)
