"""The composed VLM (timm / open_clip encoder + projector + HF causal LM): build, forward,
pooling, processor, save/reload through the Auto classes, batched generation, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import AutoModelForImageTextToText, AutoProcessor

import taid_vlm.models  # noqa: F401  (registers the Auto classes)
from taid_vlm.models.composed import (
    ComposedVLMConfig,
    ComposedVLMForConditionalGeneration,
    ComposedVLMProcessor,
    build_composed_vlm,
    build_from_spec,
    parse_spec,
)
from taid_vlm.models.composed.vision import token_grid
from taid_vlm.models.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer

TEXTS = ["a small red circle left of a blue square", "how many green triangles are there", "two"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    model, processor = build_composed_vlm("tiny", tokenizer=tokenizer, seed=0)
    return model.eval(), processor


def images(n: int, size: int = 40, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)) for _ in range(n)]


def prompt(processor: ComposedVLMProcessor, content: str) -> str:
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def batch(processor, contents, imgs, **kw):
    texts = [prompt(processor, c) for c in contents]
    return processor(text=texts, images=imgs, padding=True, padding_side="left", return_tensors="pt", **kw)


# -- sizes and factory ---------------------------------------------------------------------------
def test_tiny_is_under_a_million_parameters(tiny):
    model, _ = tiny
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert model.config.model_type == "taid_composed_vlm"


def test_sizes_grow_and_keep_their_image_token_counts(tokenizer):
    # Only configs here (building small/base is the benchmark's cost, not the unit suite's).
    from taid_vlm.models.composed.factory import SIZES, composed_config

    widths = [composed_config(SIZES[s], tokenizer).text_config.hidden_size for s in ("tiny", "small", "base")]
    assert widths == sorted(widths) and len(set(widths)) == 3
    assert composed_config(SIZES["small"], tokenizer).num_image_tokens == 16


def test_same_seed_same_weights_and_global_rng_untouched(tokenizer):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, _ = build_composed_vlm("tiny", tokenizer=tokenizer, seed=1)
    assert torch.equal(torch.rand(1), expected_next)
    b, _ = build_composed_vlm("tiny", tokenizer=tokenizer, seed=1)
    c, _ = build_composed_vlm("tiny", tokenizer=tokenizer, seed=2)
    wa, wb, wc = (m.projector.layers[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_factory_trains_a_tokenizer_when_none_is_given():
    model, processor = build_composed_vlm("tiny", texts=["a purple hexagon"], vocab_size=350)
    tok = processor.tokenizer
    assert model.config.text_config.vocab_size == len(tok) <= 350
    assert model.config.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_teacher_and_student_share_one_tokenizer(tokenizer):
    teacher, tp = build_composed_vlm("tiny", tokenizer=tokenizer, image_size=112, num_image_tokens=196)
    student, sp = build_composed_vlm("tiny", tokenizer=tokenizer, image_size=112, num_image_tokens=49)
    assert tp.tokenizer is sp.tokenizer
    assert teacher.config.text_config.vocab_size == student.config.text_config.vocab_size
    assert teacher.config.image_token_id == student.config.image_token_id
    px = torch.randn(2, 3, 112, 112)
    assert teacher.get_image_features(px).shape[:2] == (2, 196)
    assert student.get_image_features(px).shape[:2] == (2, 49)


# -- spec strings ----------------------------------------------------------------------------------
def test_parse_spec_reads_groups_and_scalars():
    spec = parse_spec(
        "composed:small?image_size=112&num_image_tokens=49&vision=timm:resnet18"
        "&vision.depth=2&text.model_type=qwen2&freeze_vision=true&projector_act=relu"
    )
    assert spec == {
        "size": "small",
        "image_size": 112,
        "num_image_tokens": 49,
        "vision": "timm:resnet18",
        "vision_kwargs": {"depth": 2},
        "text_config": {"model_type": "qwen2"},
        "freeze_vision": True,
        "projector_act": "relu",
    }


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("composed:huge", "composed:<size>"),
        ("llava:tiny", "composed:<size>"),
        ("composed:tiny?image_size", "key=value"),
        ("composed:tiny?colour=red", "unknown key"),
    ],
)
def test_bad_specs_say_what_is_wrong(bad, needle):
    with pytest.raises(ValueError, match=needle):
        parse_spec(bad)


def test_string_and_dict_specs_build_the_same_model(tokenizer):
    text = "composed:tiny?image_size=48&num_image_tokens=4&text.model_type=qwen2&text.num_hidden_layers=1&seed=3"
    a, _ = build_from_spec(text, tokenizer=tokenizer)
    b, _ = build_from_spec(
        {
            "size": "tiny",
            "image_size": 48,
            "num_image_tokens": 4,
            "text_config": {"model_type": "qwen2", "num_hidden_layers": 1},
            "seed": 3,
        },
        tokenizer=tokenizer,
    )
    assert type(a.language_model).__name__ == "Qwen2ForCausalLM"
    assert a.config.text_config.num_hidden_layers == 1
    assert a.config.to_dict() == b.config.to_dict()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_changing_the_encoder_defaults_to_its_full_grid(tokenizer):
    model, processor = build_from_spec("composed:tiny?vision=timm:test_resnet&image_size=64", tokenizer=tokenizer)
    assert model.config.vision_kwargs == {}  # the ViT overrides of the size do not leak into a CNN
    assert model.config.num_image_tokens == 4  # test_resnet: stride 32 -> 2x2 grid
    assert processor.num_image_tokens == 4


# -- vision encoders and pooling -------------------------------------------------------------------
def test_token_grid_is_square_when_possible():
    assert token_grid(49) == (7, 7)
    assert token_grid(196) == (14, 14)
    assert token_grid(12) == (3, 4)


def test_pooling_averages_the_patch_grid(tokenizer):
    model, _ = build_composed_vlm("tiny", tokenizer=tokenizer, image_size=112, num_image_tokens=49)
    px = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        grid = model.vision_tower.feature_map(px)
        tokens = model.vision_tower(px)
    assert grid.shape[-2:] == (14, 14)
    expected = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # 14x14 -> 7x7, row-major
    torch.testing.assert_close(tokens, expected)


def test_too_many_image_tokens_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match=r"4x4 feature grid, too small for 49 image tokens"):
        build_composed_vlm("tiny", tokenizer=tokenizer, num_image_tokens=49)


def test_vit_drops_its_class_token(tiny):
    model, _ = tiny
    px = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.vision_tower.encoder.forward_features(px)
        grid = model.vision_tower.feature_map(px)
    patch_tokens = tokens[:, model.vision_tower.encoder.num_prefix_tokens :]
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), patch_tokens)


def test_forward_features_fallback_lays_tokens_on_the_grid(tiny, tokenizer):
    # For timm models without forward_intermediates: ViT tokens (class token dropped) and CNN maps.
    vit = tiny[0].vision_tower
    cnn = build_composed_vlm("tiny", tokenizer=tokenizer, vision="timm:test_resnet", image_size=64)[0].vision_tower
    for tower, size in ((vit, 32), (cnn, 64)):
        px = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(tower._timm_features_as_map(px), tower.feature_map(px))


@pytest.mark.parametrize(
    "vision, kwargs, image_size, tokens",
    [
        ("open_clip:ViT-B-32", {"width": 64, "layers": 2, "patch_size": 8, "head_width": 32}, 32, 4),
        ("open_clip:RN50", {"layers": [1, 1, 1, 1], "width": 16}, 64, 4),
        ("timm:test_resnet", {}, 64, 1),
    ],
)
def test_other_encoders_give_tokens_and_gradients(tokenizer, vision, kwargs, image_size, tokens):
    model, processor = build_composed_vlm(
        "tiny", tokenizer=tokenizer, vision=vision, vision_kwargs=kwargs, image_size=image_size,
        num_image_tokens=tokens,
    )
    model.train()
    enc = batch(processor, ["<image>\nWhat shape?"], images(1))
    out = model(**enc, labels=enc["input_ids"])
    out.loss.backward()
    grads = [p.grad for p in model.vision_tower.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert model.projector.layers[0].weight.grad.abs().sum() > 0


def test_unknown_encoders_are_named_in_the_error(tokenizer):
    with pytest.raises(ValueError, match="timm has no such model"):
        build_composed_vlm("tiny", tokenizer=tokenizer, vision="timm:no_such_net")
    with pytest.raises(ValueError, match="no such open_clip model config"):
        build_composed_vlm("tiny", tokenizer=tokenizer, vision="open_clip:No-Such-ViT")
    with pytest.raises(ValueError, match="'timm:<model name>'"):
        ComposedVLMConfig(vision="resnet18")
    with pytest.raises(ValueError, match="need a tag string"):
        build_composed_vlm("tiny", tokenizer=tokenizer, vision="open_clip:ViT-B-32", vision_pretrained=True)


def test_pretrained_encoder_weights_replace_the_random_ones(tokenizer, monkeypatch):
    # The library download is replaced by a stand-in whose weights are recognisable.
    from taid_vlm.models.composed import vision as vision_module

    real_build = vision_module.build_vision_encoder

    def fake_build(spec, image_size, kwargs=None, pretrained=False):
        encoder = real_build(spec, image_size, kwargs)
        if pretrained:
            with torch.no_grad():
                for param in encoder.parameters():
                    param.fill_(0.125)
        return encoder

    monkeypatch.setattr(vision_module, "build_vision_encoder", fake_build)
    model, _ = build_composed_vlm("tiny", tokenizer=tokenizer, vision_pretrained=True)
    assert model.config.vision_pretrained is True
    assert all(bool((p == 0.125).all()) for p in model.vision_tower.parameters())


# -- forward -----------------------------------------------------------------------------------------
def test_forward_returns_logits_hidden_states_and_the_head(tiny):
    model, processor = tiny
    enc = batch(processor, ["<image>\nWhat colour?", "Count: <image>"], images(2))
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    vocab = model.config.text_config.vocab_size
    assert out.logits.shape == (*enc["input_ids"].shape, vocab)
    head = model.get_output_embeddings()
    assert head is model.language_model.lm_head
    torch.testing.assert_close(out.hidden_states[-1] @ head.weight.T, out.logits)
    # the tiny LM ties its head to the input embeddings
    assert head.weight is model.get_input_embeddings().weight


def test_images_enter_at_their_placeholder(tiny):
    model, processor = tiny
    enc = batch(processor, ["Look: <image>\nWhat colour?"], images(1, seed=1))
    other = dict(enc, pixel_values=torch.randn_like(enc["pixel_values"]))
    with torch.no_grad():
        a, b = model(**enc).logits, model(**other).logits
    first_image = int((enc["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    torch.testing.assert_close(a[:, :first_image], b[:, :first_image])  # causal: before the image, unchanged
    assert not torch.allclose(a[:, first_image:], b[:, first_image:])


def test_image_token_count_mismatch_is_a_clear_error(tiny):
    model, processor = tiny
    enc = batch(processor, ["<image>\nWhat colour?"], images(1))
    with pytest.raises(ValueError, match="image token ids but 2 image"):
        model(input_ids=enc["input_ids"], pixel_values=torch.cat([enc["pixel_values"]] * 2))
    with pytest.raises(ValueError, match="image_size"):
        model(input_ids=enc["input_ids"], pixel_values=torch.randn(1, 3, 20, 20))
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=enc["input_ids"])


# -- processor ---------------------------------------------------------------------------------------
def test_processor_expands_placeholders_and_pads_left(tiny):
    model, processor = tiny
    enc = batch(processor, ["<image>\nWhat colour?", "<image> and <image>: same shape?"], [images(1), images(2)])
    per_row = (enc["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert per_row == [16, 32]
    assert enc["pixel_values"].shape == (3, 3, 32, 32)
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][:, -1].all()
    assert enc["input_ids"][0, 0] == processor.tokenizer.pad_token_id
    flat = batch(processor, ["<image>\nWhat colour?", "<image> and <image>: same shape?"], images(1) + images(2))
    assert torch.equal(flat["input_ids"], enc["input_ids"])
    assert torch.equal(flat["pixel_values"], enc["pixel_values"])


def test_a_batch_may_mix_text_only_and_image_rows(tiny):
    model, processor = tiny
    enc = batch(processor, ["<image>\nWhat colour?", "Say two."], [images(1), []])
    assert enc["pixel_values"].shape[0] == 1
    assert (enc["input_ids"] == model.config.image_token_id).sum(1).tolist() == [16, 0]
    with torch.no_grad():
        assert model(**enc).logits.shape[:2] == enc["input_ids"].shape


def test_processor_normalises_with_the_encoder_statistics(tiny):
    _, processor = tiny
    white = Image.new("RGB", (50, 30), (255, 255, 255))
    px = processor(text=["<image>"], images=[white], return_tensors="pt")["pixel_values"]
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    expected = torch.tensor([(1 - m) / s for m, s in zip(mean, std)])
    torch.testing.assert_close(px[0, :, 0, 0], expected)


def test_processor_rejects_placeholder_image_mismatch(tiny):
    _, processor = tiny
    with pytest.raises(ValueError):
        processor(text=[prompt(processor, "<image> and <image>")], images=images(1), return_tensors="pt")


# -- save / reload ---------------------------------------------------------------------------------
def test_save_and_reload_through_auto_classes(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    reprocessor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, ComposedVLMForConditionalGeneration)
    assert isinstance(reprocessor, ComposedVLMProcessor)
    assert reprocessor.num_image_tokens == processor.num_image_tokens
    assert reprocessor.tokenizer.chat_template == processor.tokenizer.chat_template
    contents, imgs = ["<image>\nWhat colour?", "Count: <image>"], images(2)
    enc, enc2 = batch(processor, contents, imgs), batch(reprocessor, contents, imgs)
    assert all(torch.equal(enc[k], enc2[k]) for k in enc)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, reloaded(**enc2).logits)
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight


def test_untied_lm_saves_and_reloads_its_own_head(tokenizer, tmp_path):
    model, processor = build_composed_vlm("tiny", tokenizer=tokenizer, text_config={"tie_word_embeddings": False})
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.get_output_embeddings().weight, model.get_output_embeddings().weight)
    assert reloaded.get_output_embeddings().weight is not reloaded.get_input_embeddings().weight


# -- generation --------------------------------------------------------------------------------------
def test_batched_left_padded_generation_matches_one_by_one(tiny):
    model, processor = tiny
    contents = ["<image>\nWhat colour is the shape?", "Count <image>", "Describe <image> then <image> please."]
    imgs = [images(1, seed=1), images(1, seed=2), images(2, seed=3)]
    kwargs = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    together = model.generate(**batch(processor, contents, imgs), **kwargs)
    for i, (content, im) in enumerate(zip(contents, imgs)):
        alone = model.generate(**batch(processor, [content], [im]), **kwargs)
        assert torch.equal(alone.sequences[0, -6:], together.sequences[i, -6:]), f"prompt {i} differs"
        # the scores, not just the argmax: a random tiny model may repeat one token whatever happens
        for step, (a, b) in enumerate(zip(alone.scores, together.scores)):
            torch.testing.assert_close(a[0], b[i], atol=1e-4, rtol=1e-4, msg=f"prompt {i}, step {step}")


def test_generation_without_images(tiny):
    model, processor = tiny
    enc = processor(text=[prompt(processor, "Say two.")], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 3)


# -- training ----------------------------------------------------------------------------------------
def test_loss_gradient_reaches_projector_and_encoder(tokenizer):
    model, processor = build_composed_vlm("tiny", tokenizer=tokenizer)
    model.train()
    enc = batch(processor, ["<image>\nWhat colour?"], images(1))
    model(**enc, labels=enc["input_ids"]).loss.backward()
    assert model.projector.layers[0].weight.grad.abs().sum() > 0
    assert model.vision_tower.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_freeze_vision_stops_encoder_gradients_and_survives_reload(tokenizer, tmp_path):
    model, processor = build_composed_vlm("tiny", tokenizer=tokenizer, freeze_vision=True)
    model.train()
    assert not model.vision_tower.training and model.language_model.training
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    enc = batch(processor, ["<image>\nWhat colour?"], images(1))
    model(**enc, labels=enc["input_ids"]).loss.backward()
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert model.projector.layers[0].weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert reloaded.config.freeze_vision
    assert not any(p.requires_grad for p in reloaded.vision_tower.parameters())
    assert all(p.requires_grad for p in reloaded.projector.parameters())


def test_activation_checkpointing_covers_the_lm_and_keeps_gradients(tokenizer):
    model, processor = build_composed_vlm("tiny", tokenizer=tokenizer)
    model.train()
    enc = batch(processor, ["<image>\nWhat colour?"], images(1))
    model(**enc, labels=enc["input_ids"]).loss.backward()
    plain = model.projector.layers[0].weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.language_model.model.layers[0].gradient_checkpointing
    model(**enc, labels=enc["input_ids"]).loss.backward()
    torch.testing.assert_close(model.projector.layers[0].weight.grad, plain)
