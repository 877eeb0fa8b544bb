"""This year's families as teacher -> student pairs: `taid_vlm.testing.save_tiny` twice (two sizes,
two seeds, one tokenizer), then what a user runs: the chunked loss equals the plain one (values
and gradients, gradient checkpointing on), `taid-vlm distill` trains the student, `taid-vlm eval`
generates with it, and the saved student reloads in plain transformers as its own model_type.

Each pair is saved once per module; the CLI runs in process (``taid_vlm.cli.main``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.modeling_layers import GradientCheckpointingLayer

from taid_vlm.cli import main
from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.losses import EngineOptions, divergence
from taid_vlm.models import check_alignment, check_vocab_compatible, load
from taid_vlm.models.checkpointing import enable_gradient_checkpointing
from taid_vlm.testing import save_tiny, tiny_records
from taid_vlm.train.parallel import layer_units

TEXT = ("qwen3", "gemma3_text")
VISION = ("qwen3_vl", "qwen3_5", "gemma3", "paligemma", "llava_next", "llava_onevision", "mistral3", "mllama")
# Gemma 3 checkpoints ship without a final-logit softcap, Gemma 2 (PaliGemma 2) with 30; the tiny
# text pair caps at 0.25, where its logits (|z| up to ~0.5) bend far from linear.
SOFTCAP = {"gemma3_text": 0.25, "paligemma": 30.0}
# The student sees fewer image tokens than the teacher wherever the family allows it: smaller
# images, fewer pooled tokens, fewer tiles. Mllama's text always holds one <|image|> per image
# (cross-attention), so its student only gets a smaller tile.
STUDENT_OPTIONS = {
    "qwen3_vl": dict(image_size=32), "qwen3_5": dict(image_size=32), "gemma3": dict(tokens_per_image=4),
    "paligemma": dict(image_size=16), "llava_next": dict(image_size=16), "llava_onevision": dict(image_size=16),
    "mistral3": dict(image_size=16), "mllama": dict(image_size=16, max_tiles=1),
    "gemma3_text": dict(final_logit_softcapping=SOFTCAP["gemma3_text"]),
}  # fmt: skip
TEACHER_OPTIONS = {"mistral3": dict(image_size=64), "gemma3_text": dict(final_logit_softcapping=SOFTCAP["gemma3_text"])}
# Image tokens in one image of the tiny records (64 px), teacher and student.
IMAGE_TOKENS = {
    "qwen3_vl": (4, 1), "qwen3_5": (4, 1), "gemma3": (16, 4), "paligemma": (16, 4), "llava_next": (36, 10),
    "llava_onevision": (36, 10), "mistral3": (16, 1), "mllama": (1, 1),
}  # fmt: skip
AUTO_CLASS = {True: "AutoModelForCausalLM", False: "AutoModelForImageTextToText"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_shapes(root / "vision", 4, 1, seed=0, image_size=32)
    generate_shapes(root / "text", 4, 1, seed=0, text=True)
    return root


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """family -> folder with teacher/ (hidden 32, 2 layers, seed 1) and student/ (hidden 16, 1 layer, seed 2)."""
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            root = tmp_path_factory.mktemp(family)
            save_tiny(family, root / "teacher", hidden_size=32, num_layers=2, seed=1, **TEACHER_OPTIONS.get(family, {}))
            save_tiny(family, root / "student", hidden_size=16, num_layers=1, seed=2, **STUDENT_OPTIONS.get(family, {}))
            cache[family] = root
        return cache[family]

    return get


def _feature_tokens(adapter, batch) -> int:
    """Image-feature tokens in the first record (Gemma 3 writes <start_of_image>, expands soft tokens)."""
    token = getattr(adapter.tokenizer, "image_token", None) if adapter.family == "gemma3" else adapter.processor.image_token
    return int((batch.input_ids[0] == adapter.tokenizer.convert_tokens_to_ids(token)).sum())


@pytest.mark.parametrize("family", TEXT + VISION)
def test_chunked_loss_equals_the_plain_path_with_checkpointing_recomputing_every_layer_as_an_fsdp_unit(pair, family):
    root = pair(family)
    teacher, student = load(root / "teacher", role="teacher"), load(root / "student")
    check_vocab_compatible(teacher, student)
    records = tiny_records(with_images=family in VISION)
    t_batch, s_batch = teacher.render(records), student.render(records)
    if family in VISION:
        assert (_feature_tokens(teacher, t_batch), _feature_tokens(student, s_batch)) == IMAGE_TOKENS[family]
    student.model.train()
    enable_gradient_checkpointing(student.model)
    layers = [m for m in student.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    calls = {id(m): 0 for m in layers}  # forwards of each checkpointed layer's children
    hooks = [child.register_forward_hook(lambda *_, k=id(m): calls.__setitem__(k, calls[k] + 1))
             for m in layers for child in m.children()]
    t_out = check_alignment(teacher.response_outputs(t_batch), s_out := student.response_outputs(s_batch), records)
    forward_calls = dict(calls)
    assert s_out.hidden is not None and t_out.hidden is not None  # the engine reads the heads
    assert s_out.softcap == t_out.softcap == SOFTCAP.get(family)
    loss = divergence("taid", s_out.signal(), t_out.signal(), t=0.5, options=EngineOptions(chunk_size=7))
    params = [p for p in student.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for h in hooks:
        h.remove()
    recomputed = [k for k in calls if calls[k] > forward_calls[k]]  # backward ran the layer again
    assert layers and len(recomputed) == len(layers), (len(recomputed), len(layers))
    plain_student = student.response_outputs(s_batch, return_hidden=False)  # the model's own logits
    plain_teacher = teacher.response_outputs(t_batch, return_hidden=False)
    reference = divergence("taid", plain_student.logits, plain_teacher.logits, t=0.5)
    reference_grads = torch.autograd.grad(reference, params, allow_unused=True)
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, reference_grads):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    if family == "gemma3_text":  # the cap matters here: the loss without it is another number
        uncapped = divergence("taid", replace(s_out.signal(), softcap=None), replace(t_out.signal(), softcap=None), t=0.5)
        assert abs(float(uncapped - reference)) > 0.05 * abs(float(reference))
    # fsdp: every checkpointed layer (decoder, cross-attention, vision block) is its own unit
    units = {id(m) for m in layer_units(student.model)}
    assert all(id(m) in units for m in layers)


@pytest.mark.parametrize("family", TEXT + VISION)
def test_distill_then_eval_then_plain_transformers_reload(pair, data, family, tmp_path, capsys):
    import transformers

    root, text = pair(family), family in TEXT
    shapes = data / ("text" if text else "vision")
    out = tmp_path / "run"
    assert main(["distill", f"--teacher={root / 'teacher'}", f"--student={root / 'student'}",
                 f"--data={shapes / 'train.jsonl'}", f"--output={out}", "--batch-size=2", "--max-steps=2",
                 "--save-every=100", "--log-every=1", "--no-progress", "--seed=1"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 0 for r in rows)
    before, after = load_file(str(root / "student" / "model.safetensors")), load_file(str(out / "student" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)

    assert main(["eval", "--model", str(out / "student"), "--data", str(shapes / "test_vqa.jsonl"), "--task", "vqa",
                 "--output", str(tmp_path / "eval"), "--limit", "2", "--max-new-tokens", "2", "--quiet"]) == 0
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(isinstance(s["prediction"], str) for s in samples)
    capsys.readouterr()

    model = getattr(transformers, AUTO_CLASS[text]).from_pretrained(out / "student")
    assert model.config.model_type == family
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items() if k in after)


def test_an_unsupported_model_type_is_one_error_line_naming_it_and_nothing_is_written(pair, data, tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "run"
    rc = main(["distill", f"--teacher={tmp_path / 'gpt2'}", f"--student={pair('qwen3') / 'student'}",
               f"--data={data / 'text' / 'train.jsonl'}", f"--output={out}", "--max-steps=1", "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("taid-vlm distill: error: ")
    assert "'gpt2'" in lines[0] and all(t in lines[0] for t in ("qwen3_vl", "gemma3", "mllama", "paligemma"))
    assert not out.exists()
