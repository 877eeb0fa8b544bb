"""Real-scale machinery on tiny models: mixed precision, activation checkpointing, DataLoader workers.

(Two-process FSDP runs are in test_distributed.py.)
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from composed_pair import save_composed_pair
from taid_vlm.data import load_records
from taid_vlm.models import adapt, load
from taid_vlm.models.checkpointing import enable_gradient_checkpointing
from taid_vlm.models.composed import build_composed_vlm
from taid_vlm.testing.tiny import build_tiny, tiny_records
from taid_vlm.train import ConfigError, distill, load_config
from taid_vlm.train.checkpoint import checkpoint_weights
from taid_vlm.train.data import MicroBatches, RenderCollator
from taid_vlm.train.metrics import read_metrics

TEXT_FAMILIES = ("llama", "qwen2")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    return save_composed_pair(root, 16, 2)


def run_config(root: Path, out: str, **overrides):
    values = dict(teacher=str(root / "teacher"), student=str(root / "student"), data=str(root / "shapes" / "train.jsonl"),
                  output=str(root / out), max_steps=2, batch_size=4, save_every=100, log_every=1, progress=False, seed=3)
    values.update(overrides)
    return load_config(None, values)


def tensor_dtypes(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


# ---- mixed precision ------------------------------------------------------------------------------


def test_bf16_autocast_trains_keeps_fp32_masters_and_saves_the_dtype_asked_for(pair):
    """The same 4 records every step: the loss must fall; checkpoints hold fp32 master weights,
    the shipped student the dtype asked for."""
    common = dict(data_limit=4, max_steps=6, lr=3e-3, loss="fkl")
    distill(run_config(pair, "bf16", mixed_precision="bf16", save_dtype="bfloat16", **common))
    distill(run_config(pair, "fp32-ref", max_steps=1, data_limit=4, lr=3e-3, loss="fkl"))
    losses = [r["loss"] for r in read_metrics(pair / "bf16" / "metrics.jsonl")]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0], losses
    reference = read_metrics(pair / "fp32-ref" / "metrics.jsonl")[0]["loss"]
    assert losses[0] != reference and losses[0] == pytest.approx(reference, rel=0.05)  # autocast ran, close to fp32
    assert tensor_dtypes(pair / "bf16" / "student" / "model.safetensors") == {"BF16"}
    assert {str(v.dtype) for v in checkpoint_weights(pair / "bf16" / "checkpoints" / "step-0000006").values()} == {"torch.float32"}
    reloaded = load(pair / "bf16" / "student")
    assert reloaded.dtype == torch.bfloat16


def test_fp16_scales_the_loss_and_checkpoints_the_scaler(pair):
    distill(run_config(pair, "fp16", mixed_precision="fp16"))
    rows = read_metrics(pair / "fp16" / "metrics.jsonl")
    assert all(math.isfinite(r["loss"]) for r in rows)
    scaler = torch.load(pair / "fp16" / "checkpoints" / "step-0000002" / "grad_scaler.pt", weights_only=False)
    assert scaler["scale"] > 1  # the dynamic loss scale is saved for an exact resume


def test_scale_settings_are_validated():
    base = {"student": "s", "teacher": "t", "data": "d", "output": "o"}
    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        load_config(None, dict(base, mixed_precision="bf32"))
    with pytest.raises(ConfigError, match="keeps fp32 master weights"):
        load_config(None, dict(base, mixed_precision="bf16", student_dtype="bfloat16"))
    with pytest.raises(ConfigError, match="distributed must be one of"):
        load_config(None, dict(base, distributed="zero3"))
    with pytest.raises(ConfigError, match="teacher_shard=true"):
        load_config(None, dict(base, teacher_shard=True))
    with pytest.raises(ConfigError, match="use mixed_precision=bf16"):
        load_config(None, dict(base, distributed="fsdp", mixed_precision="fp16"))
    with pytest.raises(ConfigError, match="keep chunked=true"):
        load_config(None, dict(base, distributed="fsdp", chunked=False))


# ---- activation checkpointing -----------------------------------------------------------------------


def _model_and_records(family: str):
    if family == "composed":
        model, processor = build_composed_vlm("tiny", texts=["a red circle on a blue square"], seed=4)
        return model, processor, tiny_records(image_size=32)
    model, processor = build_tiny(family, num_layers=2, seed=4)
    return model, processor, tiny_records(with_images=family not in TEXT_FAMILIES)


def _gradients_and_calls(model, processor, records) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    adapter = adapt(model, processor, role="student")
    model.train()
    calls: dict[str, int] = {}  # per layer: forward calls of its direct children (transformers
    # checkpoints a layer's forward, not its __call__, so the layer's own hooks fire once)
    hooks = [m.register_forward_hook(lambda *_, n=name.rsplit(".", 1)[0]: calls.__setitem__(n, calls.get(n, 0) + 1))
             for name, m in model.named_modules() if _is_layer(name.rsplit(".", 1)[0])]
    out = adapter.response_outputs(records)
    out.full_logits().logsumexp(-1).mean().backward()
    for h in hooks:
        h.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, calls


def _is_layer(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1].isdigit() and parts[-2] in ("layers", "blocks", "layer")


# The families added with issue #25 check the same (every checkpointed layer recomputed in backward,
# gradients equal) in tests/test_models_family_pairs.py, on the pair they distil with.
@pytest.mark.parametrize("family", ("composed", "llama", "qwen2", "llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm",
                                    "internvl"))
def test_gradient_checkpointing_recomputes_every_stack_and_gives_the_same_gradients(family):
    model, processor, records = _model_and_records(family)
    checkpointed = copy.deepcopy(model)
    parts = enable_gradient_checkpointing(checkpointed)
    plain_grads, plain_calls = _gradients_and_calls(model, processor, records)
    ckpt_grads, ckpt_calls = _gradients_and_calls(checkpointed, processor, records)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 0
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    expected_parts = 1 if family in TEXT_FAMILIES else 2  # the LM, and the vision encoder
    assert len(parts) == expected_parts, parts
    for part in parts:  # every checkpointed stack recomputed its layers in backward (non-reentrant
        # recomputation stops once it has what backward needs, so not always every child)
        layers = [n for n in plain_calls if n.startswith(part + ".") or part == "(model)"]
        assert layers and all(ckpt_calls[n] > plain_calls[n] for n in layers), (part, plain_calls, ckpt_calls)


def test_gradient_checkpointing_in_the_loop_trains_the_same_student(pair):
    distill(run_config(pair, "ckpt", gradient_checkpointing=True))
    distill(run_config(pair, "no-ckpt"))
    a = load(pair / "ckpt" / "student").model.state_dict()
    b = load(pair / "no-ckpt" / "student").model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


# ---- DataLoader workers ---------------------------------------------------------------------------


def _batches(records, collator, n: int, **kwargs):
    stream = MicroBatches(records, collator, batch_size=3, seed=7, **kwargs)
    try:
        out = []
        for _ in range(n):
            mb = stream.next()
            out.append((mb, stream.epoch, stream.position))
        return out
    finally:
        stream.close()


def _same(a, b) -> bool:
    (x, ex, px), (y, ey, py) = a, b
    same_inputs = all(
        x_batch.inputs.keys() == y_batch.inputs.keys()
        and all(torch.equal(x_batch.inputs[k], y_batch.inputs[k]) for k in x_batch.inputs)
        and torch.equal(x_batch.response_mask, y_batch.response_mask)
        for x_batch, y_batch in ((x.student, y.student), (x.teacher, y.teacher))
    )
    return same_inputs and [r.id for r in x.records] == [r.id for r in y.records] and (ex, px) == (ey, py)


def test_workers_render_the_same_batches_as_the_main_process_and_resume_mid_stream(pair):
    records = load_records(pair / "shapes" / "train.jsonl")[:8]  # 2 full global batches an epoch (rank 0 of 2)
    collator = RenderCollator(load(pair / "student"), load(pair / "teacher", role="teacher"), max_length=None)
    inline = _batches(records, collator, 5, rank=1, world_size=2)
    workers = _batches(records, collator, 5, rank=1, world_size=2, num_workers=2)
    assert all(_same(a, b) for a, b in zip(inline, workers))
    assert [(e, p) for _, e, p in inline] == [(0, 6), (1, 6), (2, 6), (3, 6), (4, 6)]  # 8 records: 1 batch an epoch
    assert inline[0][0].student.input_ids.device.type == "cpu" and inline[0][0].teacher.inputs["pixel_values"].dtype == torch.float32
    # a stream started from a saved position continues with exactly the batches that followed it
    _, epoch, position = inline[1]
    resumed = _batches(records, collator, 3, rank=1, world_size=2, epoch=epoch, position=position, num_workers=2)
    assert all(_same(a, b) for a, b in zip(inline[2:], resumed))


def test_num_workers_in_the_loop_trains_the_same_student(pair):
    distill(run_config(pair, "workers", num_workers=2))
    distill(run_config(pair, "inline"))
    a = load(pair / "workers" / "student").model.state_dict()
    b = load(pair / "inline" / "student").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
