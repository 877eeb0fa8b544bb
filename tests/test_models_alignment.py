"""Teacher and student: different processors, image sizes and families, the same response tokens.

The headline case: a teacher that sees 196 image tokens per image and a student that sees 49,
from another family, distil on the same records; the loss is finite and its gradient reaches
the student (vision tower included) and never the teacher.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from taid_vlm.losses import divergence
from taid_vlm.models import check_alignment, check_vocab_compatible, load
from taid_vlm.testing.tiny import save_tiny, tiny_records
from taid_vlm.models.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(family, options, role) -> loaded adapter, each checkpoint saved once per module."""
    cache = {}

    def get(family: str, role: str = "student", **options):
        key = (family, role, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(family)
            save_tiny(family, out, **options)
            cache[key] = load(out, role=role)
        return cache[key]

    return get


def _image_tokens(adapter, batch, row: int = 0) -> int:
    return int((batch.input_ids[row] == adapter.processor.image_token_id).sum())


def test_headline_196_token_teacher_distils_into_49_token_student_of_another_family(tiny):
    teacher = tiny("llava", "teacher", image_size=224, template="llava_chatml")  # CLIP, 224 px / 16 -> 196
    student = tiny("qwen2_vl", "student", image_size=196)  # 196 px / 14, merged 2x2 -> 49
    check_vocab_compatible(teacher, student)
    records = tiny_records()
    t_batch, s_batch = teacher.render(records), student.render(records)
    assert (_image_tokens(teacher, t_batch), _image_tokens(student, s_batch)) == (196, 49)
    assert not torch.equal(t_batch.input_ids[:, :10], s_batch.input_ids[:, :10])  # different prompts

    t_out, s_out = teacher.response_outputs(t_batch), student.response_outputs(s_batch)
    t_out = check_alignment(t_out, s_out, records)
    assert not t_out.hidden.requires_grad and not t_out.head_weight.requires_grad
    loss = divergence("taid", s_out.signal(), t_out.signal(), t=0.5)  # Head and Head: the chunked engine
    reference = divergence("taid", s_out.full_logits(), t_out.full_logits(), t=0.5)
    assert torch.isfinite(loss) and loss > 0
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-5)
    student.model.zero_grad()
    loss.backward()
    grads = {n: p.grad for n, p in student.model.named_parameters()}
    assert grads["lm_head.weight"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "visual" in n), "no gradient to vision"
    assert all(p.grad is None for p in teacher.model.parameters())


@pytest.mark.parametrize(
    "teacher_spec, student_spec, counts",
    [
        (("llava", dict(image_size=224)), ("llava", dict(vision_tower="siglip", image_size=112)), (196, 49)),
        (("idefics3", dict(image_size=64)), ("smolvlm", dict(image_size=32)), (16, 4)),
        (("internvl", dict(image_size=56)), ("qwen2_5_vl", dict(image_size=56)), (49, 4)),
    ],
    ids=["llava-clip-vs-siglip", "idefics3-vs-smolvlm", "internvl-vs-qwen2.5-vl"],
)
def test_same_response_tokens_across_image_token_counts(tiny, teacher_spec, student_spec, counts):
    teacher = tiny(teacher_spec[0], "teacher", **teacher_spec[1])
    student = tiny(student_spec[0], "student", **student_spec[1])
    records = tiny_records()
    t_batch, s_batch = teacher.render(records), student.render(records)
    assert (_image_tokens(teacher, t_batch), _image_tokens(student, s_batch)) == counts
    t_out = check_alignment(teacher.response_outputs(t_batch), student.response_outputs(s_batch), records)
    assert torch.equal(t_out.token_ids, s_batch.input_ids[s_batch.response_mask])


def test_templates_that_split_the_answer_differently_raise_naming_record_and_position(tiny):
    teacher = tiny("llava", "teacher")  # Vicuna: "ASSISTANT: The" -> the answer starts with " The"
    student = tiny("qwen2_vl", "student")  # ChatML: "assistant\nThe"
    records = tiny_records()
    t_out, s_out = teacher.response_outputs(records), student.response_outputs(records)
    with pytest.raises(ValueError, match=r"record 'single' at response position 0: teacher id \d+ 'ĠThe'"):
        check_alignment(t_out, s_out, records, tokenizer=teacher.tokenizer)


def test_differing_vocabularies_are_refused_at_load_naming_the_id_and_both_strings(tiny):
    student = tiny("qwen2_vl", "student")
    other = train_bpe_tokenizer(["zebra quantum flux capacitor"] * 5, vocab_size=1024)
    with pytest.raises(ValueError, match=r"differ at id \d+: teacher '.*', student '.*'"):
        check_vocab_compatible(other, student)
    with pytest.raises(ValueError, match=r"differ at id \d+"):
        check_vocab_compatible(other, student, sample=50)


def test_vocabularies_that_differ_only_by_padded_head_rows_are_compatible(tiny):
    teacher = tiny("qwen2", "teacher", pad_vocab_to=64)
    student = tiny("llama", "student")
    check_vocab_compatible(teacher, student)
    records = tiny_records(with_images=False)[:1]
    t_out, s_out = teacher.response_outputs(records), student.response_outputs(records)
    assert teacher.vocab_size == student.vocab_size == len(student.tokenizer)
    assert t_out.vocab_size % 64 == 0 and t_out.vocab_size > s_out.vocab_size
    # Qwen2 ("assistant\n") and Llama 3 ("<|end_header_id|>\n\n") both write the answer bare but
    # end turns with different markers, so their responses differ in the last token only.
    last = s_out.num_tokens - 1
    with pytest.raises(ValueError, match=f"record 'single' at response position {last}: teacher id .*'<\\|im_end\\|>'"):
        check_alignment(t_out, s_out, records, tokenizer=student)


def test_teacher_in_another_dtype_is_cast_to_the_student(tmp_path):
    save_tiny("internvl", tmp_path)
    teacher = load(tmp_path, role="teacher", dtype="bfloat16")
    student = load(tmp_path, role="student", dtype=torch.float32)
    records = tiny_records()
    t_out, s_out = teacher.response_outputs(records), student.response_outputs(records)
    assert t_out.hidden.dtype == torch.bfloat16
    placed = check_alignment(t_out, s_out, records)
    assert placed.hidden.dtype == placed.head_weight.dtype == torch.float32
    assert placed.hidden.device == s_out.hidden.device
    loss = divergence("fkl", s_out.full_logits(), placed.full_logits())
    assert torch.isfinite(loss)


def test_no_teacher_activation_outlives_the_loss(tiny):
    teacher = tiny("llava", "teacher", image_size=224, template="llava_chatml")
    student = tiny("qwen2_vl", "student", image_size=196)
    records = tiny_records()
    seen: dict[str, weakref.ref] = {}

    def remember(name):
        def hook(module, args, output):
            seen[name] = weakref.ref(output)

        return hook

    handles = [
        teacher.model.get_decoder().norm.register_forward_hook(remember("teacher")),
        student.model.get_decoder().norm.register_forward_hook(remember("student")),
    ]
    try:
        t_out = teacher.response_outputs(records)
        gc.collect()
        assert seen["teacher"]() is None, "the teacher's [B, T, H] hidden states are still referenced"
        s_out = student.response_outputs(records)
        loss = divergence("taid", s_out.full_logits(), check_alignment(t_out, s_out, records).full_logits(), t=0.5)
        loss.backward()
        del loss, s_out, t_out
        gc.collect()
        assert seen["student"]() is None, "the student's activations are kept after backward"
    finally:
        for h in handles:
            h.remove()
