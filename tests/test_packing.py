"""Packed rows give the padded batch's outputs, loss and gradients, for text and VLM families.

Teacher and student render the same records into different rows (different lengths, image
tokens and templates), so the response tokens each hands the loss must be put back into the
canonical order; the loss and every student gradient must then be those of the padded step.
"""

from __future__ import annotations

import re

import pytest
import torch

from taid_vlm.data.records import Record
from taid_vlm.models import adapt, check_alignment
from taid_vlm.models.composed import build_composed_vlm
from taid_vlm.models.packing import choose_rows, first_fit_decreasing, packing_problem
from taid_vlm.testing.tiny import TINY_FAMILIES, build_tiny, tiny_records
from taid_vlm.train.objective import training_loss


def ragged_records(with_images: bool, every_record: bool = False) -> list[Record]:
    """tiny_records' three plus one long and three short records, interleaved, so rows hold several;
    ``every_record``: only those with an image (PaliGemma takes no batch mixing both)."""
    base = tiny_records(with_images=with_images)
    ph = "<image>" if with_images else ""
    long = Record("long", [{"role": "user", "content": ph + "Describe the image. " * 12},
                           {"role": "assistant", "content": "A red circle on a blue square. " * 6}],
                  images=base[0].images[:1] if with_images else [])
    short = [Record(f"short-{i}", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "OK" * (i + 1)}])
             for i in range(3)]
    records = [base[0], long, short[0], base[1], short[1], base[2], short[2]]
    return [r for r in records if r.images] if every_record and with_images else records


def _records_for(adapter) -> list[Record]:
    info = adapter.family_info
    return ragged_records(with_images=not info.text_only, every_record=info.prompt_format == "prefix_suffix")


def _adapter(family: str, role: str = "student", seed: int = 0, **options):
    if family == "composed":
        texts = [m["content"] for r in ragged_records(True) for m in r.messages]
        model, processor = build_composed_vlm("tiny", texts=texts, seed=seed, **options)
    else:
        model, processor = build_tiny(family, num_layers=2, seed=seed, **options)
    return adapt(model.float(), processor, role=role)


def test_first_fit_decreasing_fills_rows_up_to_the_capacity():
    lengths = [5, 9, 2, 7, 3, 3, 1]
    rows = first_fit_decreasing(lengths, 9)
    assert sorted(i for row in rows for i in row) == list(range(7))
    assert all(sum(lengths[i] for i in row) <= 9 for row in rows)
    assert len(rows) == 4 and rows == first_fit_decreasing(lengths, 9)  # 30 tokens: 4 rows of 9 is the least
    assert first_fit_decreasing(lengths, sum(lengths)) == [list(range(7))]
    assert choose_rows(lengths, 0.0) == [list(range(7))]  # varlen attention: one row, no padding at all
    assert choose_rows(lengths, 1.0) == first_fit_decreasing(lengths, 9)  # attention dominates: the narrowest rows


@pytest.mark.parametrize("family", [*TINY_FAMILIES, "composed"])
def test_packed_rows_give_the_padded_outputs_or_the_family_is_refused_by_name(family):
    adapter = _adapter(family)
    records = _records_for(adapter)
    refused = adapter.family_info.packing_refused
    if refused:  # Qwen3.5's linear attention, Gemma 3's sliding image mask, Mllama's cross-attention
        expected = f"packing: the student's family {adapter.family} cannot pack records: {refused}; set packing: false"
        assert adapter.packing_problem() == expected
        with pytest.raises(ValueError, match=re.escape(expected)):
            adapter.render(records, pack=True)
        return
    padded, packed = adapter.render(records), adapter.render(records, pack=True)
    assert packed.packed and packed.input_ids.shape[0] < padded.input_ids.shape[0]  # rows hold several records
    assert "attention_mask" not in packed.inputs
    assert int(packed.input_ids.numel()) < int(padded.input_ids.numel())
    for hidden in (True, False):
        a = adapter.response_outputs(padded, return_hidden=hidden)
        b = adapter.response_outputs(packed, return_hidden=hidden)
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.record_index, b.record_index)
        torch.testing.assert_close(b.hidden if hidden else b.logits, a.hidden if hidden else a.logits,
                                   rtol=1e-5, atol=1e-5)


PAIRS = [  # (teacher family, options), (student family, options): two text pairs, seven VLM student families
    (("qwen2", {"hidden_size": 32}), ("qwen2", {})),
    (("gemma3_text", {"hidden_size": 64}), ("gemma3_text", {"final_logit_softcapping": 30.0})),  # sliding windows, a softcap
    (("llava", {"image_size": 224, "template": "llava_chatml"}), ("qwen2_vl", {"image_size": 112})),  # 196 vs 16 image tokens
    (("qwen2_vl", {}), ("internvl", {})),
    (("smolvlm", {}), ("idefics3", {})),
    (("qwen2_vl", {}), ("qwen3_vl", {})),  # Qwen3-VL's own 3-D positions
    (("llava_next", {"hidden_size": 64}), ("llava_next", {})),  # image tiles padded per batch by the processor
    (("paligemma", {"hidden_size": 64}), ("paligemma", {})),  # a bidirectional prefix
    (("composed", {}), ("composed", {"num_image_tokens": 4})),
]


def _step(teacher, student, records, pack: bool):
    student.model.zero_grad(set_to_none=True)
    s_batch, t_batch = student.render(records, pack=pack), teacher.render(records, pack=pack)
    s_out = student.response_outputs(s_batch)
    t_out = check_alignment(teacher.response_outputs(t_batch), s_out, records)
    loss = training_loss("taid", s_out, t_out, num_tokens=s_batch.num_response_tokens, params={"t": 0.5}).total
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, s_batch, t_batch


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{t[0]}-to-{s[0]}" for t, s in PAIRS])
def test_a_packed_step_gives_the_padded_loss_and_gradients(pair):
    (t_family, t_options), (s_family, s_options) = pair
    teacher = _adapter(t_family, "teacher", seed=1, **t_options)
    student = _adapter(s_family, "student", seed=2, **s_options)
    records = _records_for(student)
    loss, grads, *_ = _step(teacher, student, records, pack=False)
    packed_loss, packed_grads, s_batch, t_batch = _step(teacher, student, records, pack=True)
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == packed_grads.keys() and len(grads) > 4
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    if (t_family, s_family) == ("llava", "qwen2_vl"):  # different lengths: each model lays the records out its own way
        assert t_batch.token_records.tolist() != s_batch.token_records.tolist()


def test_a_lora_student_packs_as_it_pads():
    """Adapters on the attention and the head (the chunked engine reads W + scale * B @ A): the
    packed step's loss and adapter gradients are the padded step's."""
    from taid_vlm.models.lora import LoraSettings, apply_lora

    teacher = _adapter("qwen2", "teacher", seed=1, hidden_size=32)
    student = _adapter("qwen2", "student", seed=2)
    lora = apply_lora(student, LoraSettings(4, 8.0, 0.0, "q_proj,v_proj,lm_head"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for layer in lora.layers.values():  # B = 0 at init: make the adapters matter
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.2)
    records = _records_for(student)
    loss, grads, *_ = _step(teacher, student, records, pack=False)
    packed_loss, packed_grads, s_batch, _ = _step(teacher, student, records, pack=True)
    assert s_batch.packed and packed_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == packed_grads.keys() and all("lora_" in name for name in grads) and len(grads) > 4
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_one_flattened_row_is_exact_too():
    """What varlen (flash) attention gets: every record in one row; exact under sdpa as well."""
    adapter = _adapter("qwen2_vl")
    records = ragged_records(with_images=True)
    padded = adapter.response_outputs(adapter.render(records))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(adapter), "attention", property(lambda self: "flash_attention_2"))
        one_row = adapter.render(records, pack=True)
    assert one_row.input_ids.shape[0] == 1 and one_row.inputs["position_ids"].shape[:2] == (4, 1)
    packed = adapter.response_outputs(one_row)
    assert torch.equal(packed.token_ids, padded.token_ids)
    torch.testing.assert_close(packed.hidden, padded.hidden, rtol=1e-5, atol=1e-5)


def test_an_attention_that_cannot_pack_is_named():
    model, tokenizer = build_tiny("llama")
    model.set_attn_implementation("paged|eager")
    adapter = adapt(model, tokenizer, role="teacher")
    problem = adapter.packing_problem()
    assert "teacher (llama) runs attention implementation 'paged|eager'" in problem and "packing: false" in problem
    with pytest.raises(ValueError, match="paged"):
        adapter.render(tiny_records(with_images=False), pack=True)
    assert packing_problem("student", "gemma3", "its image tokens attend both ways", "sdpa").startswith(
        "packing: the student's family gemma3 cannot pack records: its image tokens attend both ways")
    assert _adapter("qwen2_vl").packing_problem() is None


def test_distill_names_an_attention_that_cannot_pack_before_writing_anything(tmp_path):
    from composed_pair import save_text_pair
    from taid_vlm.train import ConfigError, distill, load_config

    root = save_text_pair(tmp_path, 8)

    def run(attention: str):
        return distill(load_config(None, dict(
            teacher=str(root / "teacher"), student=str(root / "student"), data=str(root / "shapes" / "train.jsonl"),
            output=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, packing=True,
            attn_implementation=attention)))

    with pytest.raises(ConfigError, match=r"^packing: the student \(qwen2\) runs attention implementation 'paged\|eager'"):
        run("paged|eager")
    with pytest.raises(ConfigError, match=r"^attn_implementation=no_such_kernel: the student \(qwen2\) cannot use it"):
        run("no_such_kernel")
    assert not (tmp_path / "run").exists()
    assert run("eager").steps == 1  # an implementation that packs: trains
