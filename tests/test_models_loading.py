"""load(): dispatch, clear errors, chat templates, and the rendering edge cases."""

from __future__ import annotations

import pytest
import torch

from taid_vlm.data import Record
from taid_vlm.models import ModelAdapter, check_alignment, load
from taid_vlm.testing.tiny import save_tiny, tiny_records
from taid_vlm.models.tokenizer import PLAIN_TEMPLATE


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(family: str, **options):
        key = (family, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = save_tiny(family, tmp_path_factory.mktemp(family), **options)
        return cache[key]

    return get


def _response_texts(adapter: ModelAdapter, batch) -> list[str]:
    return [adapter.tokenizer.decode(batch.input_ids[i][batch.response_mask[i]]) for i in range(len(batch.record_ids))]


# ---- dispatch and errors ------------------------------------------------------------------------


def test_unknown_family_error_lists_the_supported_ones(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not a supported family.*llama, qwen2, qwen3, gemma3_text, llava"):
        load(tmp_path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(OSError, match="no-such-model"):
        load(tmp_path / "no-such-model")


def test_missing_num2words_says_what_to_install(saved, monkeypatch):
    import transformers.models.smolvlm.processing_smolvlm as smolvlm

    path = saved("smolvlm")
    monkeypatch.setattr(smolvlm, "num2words", None)
    with pytest.raises(ImportError, match=r"cannot build the smolvlm processor of .*: pip install num2words"):
        load(path)


def test_video_processor_that_cannot_be_built_says_what_to_install(saved, monkeypatch):
    from transformers import Qwen2VLVideoProcessor
    from transformers.utils.import_utils import TORCHVISION_IMPORT_ERROR

    def no_torchvision(self, *args, **kwargs):
        raise ImportError(TORCHVISION_IMPORT_ERROR.format("Qwen2VLVideoProcessor"))

    path = saved("qwen2_vl")
    monkeypatch.setattr(Qwen2VLVideoProcessor, "__init__", no_torchvision)
    with pytest.raises(ImportError, match=r"qwen2_vl processor .*pip install torchvision"):
        load(path)


def test_bad_role_and_dtype_are_refused(saved):
    with pytest.raises(ValueError, match="role must be one of"):
        load(saved("qwen2"), role="teaching-assistant")
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load(saved("qwen2"), dtype="float8")


def test_composed_specs_dispatch_to_the_composed_builder_and_their_saves_reload_generically(tmp_path):
    teacher = load("composed:tiny", role="teacher")
    student = load({"size": "tiny", "num_image_tokens": 4, "seed": 1})
    assert (teacher.family, student.family) == ("composed", "composed")
    records = tiny_records()
    t_batch, s_batch = teacher.render(records), student.render(records)
    image_id = teacher.processor.image_token_id
    assert int((t_batch.input_ids[0] == image_id).sum()) == 16 and int((s_batch.input_ids[0] == image_id).sum()) == 4
    check_alignment(teacher.response_outputs(t_batch), student.response_outputs(s_batch), records)
    student.save(tmp_path)
    reloaded = load(tmp_path)  # AutoModelForImageTextToText + AutoProcessor, no spec
    assert type(reloaded.model).__name__ == "ComposedVLMForConditionalGeneration"
    assert torch.equal(reloaded.render(records).input_ids, s_batch.input_ids)
    assert reloaded.generate(records[:1], max_new_tokens=3) == student.generate(records[:1], max_new_tokens=3)


def test_teacher_is_frozen_in_eval_mode_and_student_is_left_trainable(saved):
    teacher = load(saved("llava"), role="teacher")
    student = load(saved("llava"), role="student")
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    assert all(p.requires_grad for p in student.model.parameters())
    out = student.response_outputs(tiny_records()[:1])
    assert out.hidden.requires_grad


# ---- chat templates --------------------------------------------------------------------------------


def test_a_tokenizer_without_chat_template_gets_the_plain_default_ending_turns_with_eos(saved):
    adapter = load(saved("qwen2"))
    adapter.tokenizer.chat_template = None
    plain = ModelAdapter(adapter.model, adapter.tokenizer, adapter.family_info)
    assert plain.chat_template == PLAIN_TEMPLATE
    batch = plain.render(tiny_records(with_images=False)[:1])
    assert batch.texts[0].startswith("### User:\n")
    assert _response_texts(plain, batch) == ["The circle is red." + plain.tokenizer.eos_token]


def test_a_tokenizer_without_pad_token_pads_with_eos(saved):
    adapter = load(saved("llama"))
    adapter.tokenizer.pad_token = None
    unpadded = ModelAdapter(adapter.model, adapter.tokenizer, adapter.family_info)
    assert unpadded.tokenizer.pad_token == unpadded.tokenizer.eos_token
    batch = unpadded.render(tiny_records(with_images=False))
    assert batch.num_response_tokens == adapter.render(tiny_records(with_images=False)).num_response_tokens


def test_a_vlm_processor_without_chat_template_renders_images_in_the_plain_default(saved):
    adapter = load(saved("llava"))
    adapter.processor.chat_template = adapter.tokenizer.chat_template = None
    plain = ModelAdapter(adapter.model, adapter.processor, adapter.family_info)
    assert not plain.content_parts  # the plain template reads strings: <image> stays inline
    batch = plain.render(tiny_records()[:1])
    assert int((batch.input_ids[0] == plain.processor.image_token_id).sum()) == 49
    assert _response_texts(plain, batch) == ["The circle is red." + plain.tokenizer.eos_token]


def test_cross_attention_images_align_when_the_processor_prepends_bos_to_a_template_without_one(saved):
    adapter = load(saved("mllama"), chat_template="chatml")  # no bos: MllamaProcessor inserts one
    records = tiny_records()
    batch = adapter.render(records)
    assert not batch.texts[0].startswith(adapter.tokenizer.bos_token)
    assert adapter.tokenizer.convert_ids_to_tokens(int(batch.input_ids[0, 0])) == adapter.tokenizer.bos_token
    for row, record in enumerate(records):  # the two-images record has an image after an answer
        answers = [m["content"] for m in record.messages if m["role"] == "assistant"]
        assert _response_texts(adapter, batch)[row] == "".join(a + "<|im_end|>" for a in answers), record.id


def test_templates_are_overridable_per_model_and_survive_save(saved, tmp_path):
    teacher = load(saved("llava"), role="teacher", chat_template="chatml")
    student = load(saved("internvl"))  # its own ChatML-style template
    records = tiny_records()
    check_alignment(teacher.response_outputs(records), student.response_outputs(records), records)
    assert teacher.render(records[:1]).texts[0].startswith("<|im_start|>user\n<image>")
    teacher.save(tmp_path)
    assert load(tmp_path).chat_template == teacher.chat_template


# ---- rendering edge cases --------------------------------------------------------------------------


def test_max_length_never_cuts_a_response_it_names_the_record(saved):
    adapter = load(saved("qwen2_vl"))
    records = tiny_records()
    longest = int(adapter.render(records).inputs["attention_mask"].sum(1).max())
    assert adapter.render(records, max_length=longest).num_response_tokens > 0
    with pytest.raises(ValueError, match=r"record\(s\) .*'two-images' \(\d+ tokens\) exceed max_length"):
        adapter.render(records, max_length=longest - 1)


def test_records_with_and_without_images_share_a_batch(saved):
    adapter = load(saved("idefics3"))
    with_image = tiny_records()[0]
    text_only = Record("text-only", [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}])
    batch = adapter.render([with_image, text_only])
    assert _response_texts(adapter, batch) == [" The circle is red.<end_of_utterance>", " Yes.<end_of_utterance>"]
    assert int((batch.input_ids[1] == adapter.processor.image_token_id).sum()) == 0


def test_images_without_placeholder_go_in_front_of_the_first_user_turn(saved):
    adapter = load(saved("qwen2_vl"))
    record = tiny_records()[0]
    question = {"role": "user", "content": "What colour is the circle?"}
    bare = Record("bare", [question, *record.messages[1:]], record.images)
    a, b = adapter.render([record]), adapter.render([bare])
    assert torch.equal(a.input_ids, b.input_ids)


def test_an_image_in_an_assistant_turn_is_refused(saved):
    adapter = load(saved("qwen2_vl"))
    record = tiny_records()[0]
    odd = Record("odd", [record.messages[0], {"role": "assistant", "content": "<image>"}], record.images * 2)
    with pytest.raises(ValueError, match=r"record 'odd', message 1: <image> in a 'assistant' message"):
        adapter.render([odd])


def test_processors_that_do_not_report_expansions_are_aligned_from_the_end(saved):
    adapter = load(saved("llava"))
    records = tiny_records()[:2]  # every image comes before every response
    expected = adapter.render(records).response_mask
    processor_call = type(adapter.processor).__call__

    def without_offsets(self, *args, **kwargs):
        out = processor_call(self, *args, **kwargs)
        out.pop("text_replacement_offsets", None)
        return out

    type(adapter.processor).__call__ = without_offsets
    try:
        assert torch.equal(adapter.render(records).response_mask, expected)
        with pytest.raises(ValueError, match="'two-images' has an image after a response"):
            adapter.render(tiny_records()[2:])
    finally:
        type(adapter.processor).__call__ = processor_call


def test_device_map_auto_places_a_checkpoint_and_still_renders(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from taid_vlm.models import load
    from taid_vlm.testing.tiny import save_tiny, tiny_records

    save_tiny("qwen2", tmp_path / "m")
    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    adapter = load(tmp_path / "m", role="teacher", device="auto")
    assert seen["device_map"] == "auto"  # placed by accelerate's device map, not by .to()
    out = adapter.response_outputs(tiny_records(with_images=False)[:1])
    assert out.num_tokens > 0 and torch.isfinite(out.hidden).all()
