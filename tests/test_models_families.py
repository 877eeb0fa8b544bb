"""Every supported family, through one adapter: a tiny random checkpoint is saved, reloaded
offline, rendered, run and generated from, and each claim of the adapter is checked against
the model itself (its logits, its tokenizer's decoding, its own generate)."""

from __future__ import annotations

import pytest
import torch

from taid_vlm.models import ModelAdapter, load
from taid_vlm.models.families import detect_family
from taid_vlm.testing.tiny import TINY_FAMILIES, build_tiny, save_tiny, tiny_records

FAMILIES = [*TINY_FAMILIES, "composed"]
TEXT_ONLY = {"llama", "qwen2", "qwen3", "gemma3_text"}
# Image tokens per image of each tiny model at its default size (Mllama: one <|image|> token, the
# pixels go through cross-attention; LLaVA-NeXT/OneVision: base view 16 + one tile 16 + 4 newlines).
IMAGE_TOKENS = {
    "llava": 49, "qwen2_vl": 4, "qwen2_5_vl": 4, "idefics3": 16, "smolvlm": 16, "internvl": 49, "composed": 16,
    "qwen3_vl": 4, "qwen3_5": 4, "gemma3": 16, "paligemma": 16, "llava_next": 36, "mistral3": 4, "mllama": 1,
    "llava_onevision": (36, 17),  # OneVision tiles a lone image; several in one record get the base view + newline
}  # fmt: skip
# The token repeated per image feature, where it is not the processor's image_token (Gemma 3
# writes <start_of_image> in the prompt and expands it into soft tokens).
FEATURE_TOKEN = {"gemma3": "<image_soft_token>"}
MODEL_CLASS = {
    "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration", "composed": "ComposedVLMForConditionalGeneration",
    "qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_5": "Qwen3_5ForConditionalGeneration", "gemma3": "Gemma3ForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration", "mistral3": "Mistral3ForConditionalGeneration",
    "mllama": "MllamaForConditionalGeneration",
}  # fmt: skip


def _build(family: str):
    if family == "composed":
        from taid_vlm.models.composed import build_from_spec

        return build_from_spec("composed:tiny")
    return build_tiny(family)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (in-memory adapter, adapter loaded from its saved directory), built once."""
    cache: dict[str, tuple[ModelAdapter, ModelAdapter]] = {}

    def get(family: str) -> tuple[ModelAdapter, ModelAdapter]:
        if family not in cache:
            out = tmp_path_factory.mktemp(family)
            model, processor = _build(family)
            model.save_pretrained(out)
            processor.save_pretrained(out)
            fresh = ModelAdapter(model, processor, detect_family(model.config.model_type), role="teacher")
            cache[family] = (fresh, load(out, role="teacher"))
        return cache[family]

    return get


def _records(family: str):
    return tiny_records(with_images=family not in TEXT_ONLY)


def _predicting(batch) -> torch.Tensor:
    mask = torch.zeros_like(batch.response_mask)
    mask[:, :-1] = batch.response_mask[:, 1:]
    return mask


def _runs(positions: torch.Tensor) -> list[list[int]]:
    """Consecutive masked positions grouped: one run per assistant turn."""
    runs: list[list[int]] = []
    for p in positions.tolist():
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_checkpoint_reloads_offline_and_computes_the_same(checkpoints, family):
    fresh, loaded = checkpoints(family)
    assert type(loaded.model).__name__ == MODEL_CLASS[family]
    assert loaded.family == fresh.family
    records = _records(family)
    a, b = fresh.render(records), loaded.render(records)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)
    torch.testing.assert_close(fresh.response_outputs(a).full_logits(), loaded.response_outputs(b).full_logits())


@pytest.mark.parametrize("family", FAMILIES)
def test_response_mask_covers_exactly_each_assistant_turn_and_its_end_marker(checkpoints, family):
    _, adapter = checkpoints(family)
    records = _records(family)
    batch = adapter.render(records)
    assert adapter.end_of_turn, "every tiny template ends an assistant turn with a marker"
    for row, record in enumerate(records):
        answers = [m["content"] for m in record.messages if m["role"] == "assistant"]
        if adapter.family_info.prompt_format == "prefix_suffix":  # PaliGemma: the last answer is the suffix
            answers = answers[-1:]
        runs = _runs(batch.response_mask[row].nonzero().squeeze(1))
        assert len(runs) == len(answers), record.id
        for run, answer in zip(runs, answers):
            decoded = adapter.tokenizer.decode(batch.input_ids[row, run])
            assert decoded.endswith(adapter.end_of_turn), (record.id, decoded)
            # Templates may trim the answer or write a space before it ("ASSISTANT: Red"): that
            # whitespace is the only difference allowed.
            assert decoded[: -len(adapter.end_of_turn)].strip() == answer.strip(), (record.id, decoded)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_applied_to_hidden_states_equals_the_models_logits(checkpoints, family):
    _, adapter = checkpoints(family)
    records = _records(family)
    batch = adapter.render(records)
    out = adapter.response_outputs(batch, return_hidden=True)
    assert out.hidden is not None and out.logits is None
    assert out.hidden.shape == (batch.num_response_tokens, adapter.model.config.get_text_config().hidden_size)
    with torch.no_grad():
        reference = adapter.model(**batch.inputs).logits[_predicting(batch)]
    torch.testing.assert_close(out.full_logits(), reference)
    as_logits = adapter.response_outputs(batch, return_hidden=False)
    torch.testing.assert_close(as_logits.logits, reference)
    # targets are the masked ids in (record, turn, token) order, and the labels agree
    assert torch.equal(out.token_ids, batch.input_ids[batch.response_mask])
    assert out.record_index.tolist() == sorted(out.record_index.tolist())
    assert torch.equal(batch.labels[batch.response_mask], out.token_ids)
    assert bool((batch.labels[~batch.response_mask] == -100).all())


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in TEXT_ONLY])
def test_image_tokens_are_expanded_but_never_distilled(checkpoints, family):
    _, adapter = checkpoints(family)
    records = _records(family)
    batch = adapter.render(records)
    image_id = adapter.tokenizer.convert_tokens_to_ids(FEATURE_TOKEN.get(family, adapter.processor.image_token))
    for row, record in enumerate(records):
        count = int((batch.input_ids[row] == image_id).sum())
        expected = IMAGE_TOKENS[family]
        if isinstance(expected, tuple):  # (alone, each of several)
            expected = expected[len(record.images) > 1]
        assert count == expected * len(record.images), record.id
    image_ids = torch.tensor(sorted({image_id} | set(adapter._image_ids.tolist())))
    assert not bool(torch.isin(batch.input_ids[batch.response_mask], image_ids).any())


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_left_padded_generation_matches_one_by_one(checkpoints, family):
    _, adapter = checkpoints(family)
    records = _records(family)
    batched = adapter.generate(records, max_new_tokens=5)
    single = [adapter.generate([r], max_new_tokens=5)[0] for r in records]
    assert batched == single
    assert all(isinstance(text, str) for text in batched)
    assert adapter.end_of_turn not in "".join(batched)  # special tokens are stripped


def test_tiny_checkpoint_directory_has_everything_a_hub_checkpoint_has(tmp_path):
    save_tiny("qwen2_vl", tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    assert "chat_template" in " ".join(names)
