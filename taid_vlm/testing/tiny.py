"""Tiny random models and processors for every supported family, built offline.

Tests and docs need a real checkpoint of each family (config, weights, tokenizer, image and video
processors, chat template) that saves and reloads like a hub model, without a hub. Everything
here is built from transformers ``*Config`` classes with tiny dimensions and random weights.

All tiny tokenizers share ONE vocabulary (a BPE trained once on the project's base corpus with
the union of every family's special tokens), so any two tiny models, of the same family or not,
are vocabulary-compatible: what differs between families is only which tokens the processor
and chat template use. ``build_tiny(..., vocabulary="other")`` builds on a second, genuinely
different BPE (fewer merges over the same texts, the special tokens in another order, so other
ids and other splits): the pair a cross-tokenizer distillation needs (docs/CROSS-TOKENIZER.md). Chat templates are faithful, shortened versions of each family's real
one, so the adapter meets the same quirks (default system prompts, "Assistant: " spacing,
image-first parts) that it meets on real checkpoints.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from ..models.tokenizer import CHATML_TEMPLATE, train_bpe_tokenizer

# Every family's special tokens, in one fixed order, so every tiny tokenizer has the same ids.
_ROW_COL_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
TINY_SPECIAL_TOKENS = [
    "<s>", "</s>",  # Llava (Vicuna)
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # Llama 3
    "<|endoftext|>",  # Qwen: transformers' Qwen2Tokenizer adds it as unk when it is missing
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",  # Qwen2-VL
    "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<video>",  # Idefics3/SmolVLM
    "<img>", "</img>", "<IMG_CONTEXT>",  # InternVL
    *_ROW_COL_TOKENS,
]  # fmt: skip

# Words the tiny templates and tests use, so they tokenize into a few tokens, not bytes.
_TINY_CORPUS = [
    "USER: ASSISTANT: User: Assistant: system user assistant You are a helpful assistant.",
    "What colour is the circle? The circle is red. Describe the image. A red circle on a blue square.",
]

# ---- chat templates (faithful, shortened versions of each family's real template) ----------

# Meta-Llama-3-Instruct: headers, trimmed content, <|eot_id|> ends every turn.
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2-Instruct: ChatML with a default system prompt.
QWEN2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# LLaVA-1.5 (Vicuna v1 conversation): images first, "USER: ... ASSISTANT: answer</s>". The hub
# template drops the </s>; training used it, and a student must learn to stop, so it stays.
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] == 'user' %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] }}{% endfor %}"
    "{{ eos_token }}"
    "{% endif %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# LLaVA-OneVision / LLaVA-Interleave (Qwen2 LM): ChatML, images first in a turn.
LLAVA_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2-VL-Instruct: ChatML, default system prompt, images as vision_start/pad/end in place.
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Idefics3 / SmolVLM: "User:<image>text<end_of_utterance>\nAssistant: text<end_of_utterance>\n".
_IDEFICS_BODY = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_TEMPLATE = "<|begin_of_text|>" + _IDEFICS_BODY
SMOLVLM_TEMPLATE = "<|im_start|>" + _IDEFICS_BODY

# InternVL (transformers-native checkpoints): ChatML, "<IMG_CONTEXT>\n" per image.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES = {
    "llama3": LLAMA3_TEMPLATE,
    "qwen2": QWEN2_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
    "llava": LLAVA_TEMPLATE,
    "llava_chatml": LLAVA_CHATML_TEMPLATE,
    "qwen2_vl": QWEN2_VL_TEMPLATE,
    "idefics3": IDEFICS3_TEMPLATE,
    "smolvlm": SMOLVLM_TEMPLATE,
    "internvl": INTERNVL_TEMPLATE,
}

# ---- tokenizers ------------------------------------------------------------------------------


VOCABULARIES = ("shared", "other")
_VOCABULARY: ContextVar[str] = ContextVar("tiny_vocabulary", default="shared")


@lru_cache(maxsize=2)
def _vocabulary(name: str = "shared") -> str:
    """Train a tiny BPE (about a second) and keep it serialised for cheap copies.

    ``shared``: the one vocabulary of every tiny model (596 entries). ``other``: the same texts
    with fewer merges (420 entries) and the family special tokens in reverse order, so ids,
    merges and splits differ from ``shared`` from id 5 on (``check_vocab_compatible`` refuses the
    pair).
    """
    if name not in VOCABULARIES:
        raise ValueError(f"tiny vocabulary must be one of {VOCABULARIES}, got {name!r}")
    specials = TINY_SPECIAL_TOKENS if name == "shared" else TINY_SPECIAL_TOKENS[::-1]
    tokenizer = train_bpe_tokenizer(_TINY_CORPUS, vocab_size=1024 if name == "shared" else 420,
                                    extra_special_tokens=specials)
    return tokenizer.backend_tokenizer.to_str()


def tiny_tokenizer(
    chat_template: str | None,
    bos_token: str = "<|begin|>",
    eos_token: str = "<|im_end|>",
    named_tokens: dict[str, str] | None = None,
    vocabulary: str | None = None,
) -> PreTrainedTokenizerFast:
    """A fresh copy of a tiny vocabulary with this family's named special tokens.

    ``named_tokens`` become tokenizer attributes (``tokenizer.image_token``...), which is how
    transformers processors find their placeholders. ``vocabulary``: "shared" (default) or
    "other" (see ``_vocabulary``); ``build_tiny(vocabulary=...)`` sets it for every builder.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_vocabulary(vocabulary or _VOCABULARY.get())),
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token="<|pad|>",
        extra_special_tokens=dict(named_tokens or {}),
        chat_template=chat_template,
    )


# ---- shared pieces of tiny configs -------------------------------------------------------------

TINY_HIDDEN = 32


@dataclass(frozen=True)
class _Size:
    """What every tiny builder shares: LM width and depth, vocabulary padding, template choice."""

    hidden_size: int
    num_layers: int
    pad_vocab_to: int
    template: str | None

    def lm(self, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
        """Keyword arguments of a tiny Llama / Qwen2 config over ``tokenizer``'s vocabulary."""
        rows = len(tokenizer)
        if self.pad_vocab_to > 1:  # real checkpoints pad the head, e.g. to a multiple of 64
            rows = -(-rows // self.pad_vocab_to) * self.pad_vocab_to
        return dict(
            vocab_size=rows,
            hidden_size=self.hidden_size,
            intermediate_size=2 * self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    def vision(self, image_size: Any, patch_size: Any) -> dict[str, Any]:
        """A one-layer ViT-style tower config (Siglip, CLIP, Idefics3, InternVL field names)."""
        return dict(
            hidden_size=self.hidden_size, intermediate_size=2 * self.hidden_size, num_hidden_layers=1,
            num_attention_heads=2, image_size=image_size, patch_size=patch_size,
        )  # fmt: skip

    def chat_template(self, default: str) -> str:
        return TEMPLATES[self.template or default]


def _with_generation_defaults(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    """Generation stops at the tokenizer's eos (each family's end-of-turn marker here)."""
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = (
        tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id,
    )  # fmt: skip
    return model.eval()


def _check_patch_multiple(family: str, image_size: int, patch: int) -> None:
    if image_size % patch:
        raise ValueError(f"tiny {family}: image_size {image_size} must be a multiple of {patch}")


# ---- builders per family -------------------------------------------------------------------------


def _build_text(family: str, size: _Size, **_: Any):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if family == "llama":
        tok = tiny_tokenizer(size.chat_template("llama3"), "<|begin_of_text|>", "<|eot_id|>")
        config = LlamaConfig(**size.lm(tok))
    else:
        tok = tiny_tokenizer(size.chat_template("qwen2"), "<|begin|>", "<|im_end|>")
        config = Qwen2Config(**size.lm(tok))
    return AutoModelForCausalLM.from_config(config), tok


def _build_llava(family: str, size: _Size, image_size: int = 112, vision_tower: str = "clip", patch_size: int = 16):
    """LLaVA with a CLIP tower (CLS dropped: (S/16)^2 tokens) or a SigLIP tower (no CLS)."""
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
        LlavaProcessor, SiglipImageProcessor, SiglipVisionConfig,
    )  # fmt: skip

    _check_patch_multiple(family, image_size, patch_size)
    eos = "<|im_end|>" if size.template == "llava_chatml" else "</s>"
    tok = tiny_tokenizer(size.chat_template("llava"), "<s>", eos, {"image_token": "<image>"})
    vision = size.vision(image_size, patch_size)
    if vision_tower == "clip":  # CLS token dropped by the "default" feature strategy
        vision_config, strategy, extra = CLIPVisionConfig(**vision), "default", 1
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    elif vision_tower == "siglip":  # no CLS token: every patch is an image token
        vision_config, strategy, extra = SiglipVisionConfig(**vision), "full", 0
        image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"tiny llava: vision_tower must be 'clip' or 'siglip', got {vision_tower!r}")
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=LlamaConfig(**size.lm(tok)),
        image_token_index=tok.image_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy=strategy,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra,
        chat_template=tok.chat_template,
    )
    return LlavaForConditionalGeneration(config), processor


def _build_qwen2_vl(family: str, size: _Size, image_size: int = 56):
    """Qwen2-VL / Qwen2.5-VL: 14 px patches merged 2x2, so an S px square image gives (S/28)^2 tokens."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config, Qwen2VLForConditionalGeneration as Model
        from transformers import Qwen2VLProcessor as Processor

        vision = dict(depth=1, embed_dim=size.hidden_size, hidden_size=size.hidden_size, num_heads=2)
    else:
        from transformers import Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model
        from transformers import Qwen2_5_VLProcessor as Processor

        vision = dict(
            depth=2, hidden_size=size.hidden_size, out_hidden_size=size.hidden_size,
            intermediate_size=2 * size.hidden_size, num_heads=2, window_size=56, fullatt_block_indexes=[1],
        )  # fmt: skip
    _check_patch_multiple(family, image_size, 28)
    tok = tiny_tokenizer(
        size.chat_template("qwen2_vl"), "<|begin|>", "<|im_end|>",
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(size.hidden_size // 2)}
    config = Config(
        text_config=dict(size.lm(tok), rope_parameters=rope),
        vision_config=dict(vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    pixels = image_size * image_size
    processor = Processor(
        image_processor=Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels),
        chat_template=tok.chat_template,
    )
    return Model(config), processor


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) like Qwen2-VL's [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


_IDEFICS_TOKENS = {
    "image_token": "<image>", "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>", "video_token": "<video>",
}  # fmt: skip


def _build_idefics3(family: str, size: _Size, image_size: int = 64, patch_size: int = 8):
    """Idefics3 / SmolVLM without image splitting: (S/patch)^2 / 4 image tokens (pixel shuffle 2)."""
    from transformers import LlamaConfig

    if family == "idefics3":
        from transformers import Idefics3Config as Config, Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3ImageProcessor as ImageProcessor, Idefics3Processor as Processor

        bos, named = "<|begin_of_text|>", {"image_token": "<image>"}
    else:
        from transformers import SmolVLMConfig as Config, SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMImageProcessor as ImageProcessor, SmolVLMProcessor as Processor

        bos, named = "<|im_start|>", _IDEFICS_TOKENS
    _check_patch_multiple(family, image_size, 2 * patch_size)
    tok = tiny_tokenizer(size.chat_template(family), bos, "<end_of_utterance>", named)
    config = Config(
        vision_config=size.vision(image_size, patch_size),
        text_config=LlamaConfig(**size.lm(tok)),
        image_token_id=tok.image_token_id,
        scale_factor=2,
    )
    edge = {"longest_edge": image_size}
    extra: dict[str, Any] = {}
    if family == "smolvlm":
        from transformers import SmolVLMVideoProcessor

        extra["video_processor"] = SmolVLMVideoProcessor(size=edge, max_image_size=edge)
    processor = Processor(
        image_processor=ImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
        tokenizer=tok,
        image_seq_len=(image_size // patch_size) ** 2 // 4,
        chat_template=tok.chat_template,
        **extra,
    )
    return Model(config), processor


def _build_internvl(family: str, size: _Size, image_size: int = 56, patch_size: int = 4):
    """InternVL with a Qwen2 LM: (S/patch)^2 / 4 tokens per image tile (pixel shuffle 0.5), one tile."""
    from transformers import (
        GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor,
        InternVLVideoProcessor, Qwen2Config,
    )  # fmt: skip

    _check_patch_multiple(family, image_size, 2 * patch_size)
    tok = tiny_tokenizer(size.chat_template("internvl"), "<|begin|>", "<|im_end|>", {
        "start_image_token": "<img>", "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>",
    })  # fmt: skip
    seq_len = (image_size // patch_size) ** 2 // 4
    config = InternVLConfig(
        vision_config=size.vision([image_size, image_size], [patch_size, patch_size]),
        text_config=Qwen2Config(**size.lm(tok)),
        image_token_id=tok.context_image_token_id,
        image_seq_length=seq_len,
        downsample_ratio=0.5,
    )
    square = {"height": image_size, "width": image_size}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=square, crop_to_patches=False, max_patches=1),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size=square),
        image_seq_length=seq_len,
        chat_template=tok.chat_template,
    )
    return InternVLForConditionalGeneration(config), processor


_BUILDERS: dict[str, Callable[..., tuple[torch.nn.Module, Any]]] = {
    "llama": _build_text,
    "qwen2": _build_text,
    "llava": _build_llava,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_vl,
    "idefics3": _build_idefics3,
    "smolvlm": _build_idefics3,
    "internvl": _build_internvl,
}
TINY_FAMILIES = tuple(_BUILDERS)


def build_tiny(
    family: str,
    *,
    hidden_size: int = TINY_HIDDEN,
    num_layers: int = 1,
    seed: int = 0,
    pad_vocab_to: int = 1,
    template: str | None = None,
    vocabulary: str = "shared",
    **options: Any,
) -> tuple[torch.nn.Module, Any]:
    """A tiny random ``(model, processor)`` of ``family``; text families return the tokenizer.

    ``template`` names one of ``TEMPLATES`` (default: the family's own). Family options:
    ``image_size`` (all VLMs), ``vision_tower`` ("clip" | "siglip", llava), ``patch_size``.
    ``pad_vocab_to`` rounds the model's vocabulary rows up like real checkpoints do.
    ``vocabulary="other"`` builds on the second tiny BPE (a cross-tokenizer partner of every
    ``shared`` model). Weights depend on ``seed`` only; the global random state is left untouched.
    """
    if family not in _BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    if template is not None and template not in TEMPLATES:
        raise ValueError(f"unknown tiny template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown tiny vocabulary {vocabulary!r}; choose one of {', '.join(VOCABULARIES)}")
    size = _Size(hidden_size, num_layers, pad_vocab_to, template)
    chosen = _VOCABULARY.set(vocabulary)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, processor = _BUILDERS[family](family, size, **options)
    finally:
        _VOCABULARY.reset(chosen)
    return _with_generation_defaults(model, getattr(processor, "tokenizer", processor)), processor


def save_tiny(family: str, out_dir: str | Path, **options: Any) -> Path:
    """Build a tiny ``family`` model and save it as a checkpoint directory ``load()`` accepts."""
    out = Path(out_dir)
    model, processor = build_tiny(family, **options)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_tiny_composed_pair(teacher_dir: str | Path, student_dir: str | Path, texts: list[str]) -> tuple[Path, Path]:
    """A tiny composed teacher (16 image tokens) and student (4) sharing one BPE trained on ``texts``,
    saved as checkpoint directories: the pair tests and the CLI fuzzer distil with."""
    from ..models.composed import build_composed_vlm

    teacher, processor = build_composed_vlm("tiny", texts=texts, seed=1)
    student, student_processor = build_composed_vlm("tiny", tokenizer=processor.tokenizer, num_image_tokens=4, seed=2)
    for model, proc, out in ((teacher, processor, teacher_dir), (student, student_processor, student_dir)):
        model.save_pretrained(out)
        proc.save_pretrained(out)
    return Path(teacher_dir), Path(student_dir)


def tiny_records(with_images: bool = True, image_size: int = 64) -> list:
    """Three records that exercise what rendering must get right: a system prompt, two assistant
    turns (one padded with spaces), a one-letter answer that also occurs in the template's
    headers, and an image in a later user turn (after a response)."""
    import numpy as np
    from PIL import Image

    from ..data.records import Record

    def image(seed: int) -> Image.Image:
        pixels = np.random.default_rng(seed).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        return Image.fromarray(pixels)

    ph = "<image>" if with_images else ""
    return [
        Record("single", [
            {"role": "user", "content": f"{ph}What colour is the circle?"},
            {"role": "assistant", "content": "The circle is red."},
        ], images=[image(0)] if with_images else []),
        Record("multi-turn", [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"{ph}Describe the image."},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "More detail?"},
            {"role": "assistant", "content": " A red circle on a blue square. "},
        ], images=[image(1)] if with_images else []),
        Record("two-images", [
            {"role": "user", "content": f"{ph}What colour is the square?"},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": f"And here?{ph}"},
            {"role": "assistant", "content": "Yes. There are two yellow objects."},
        ], images=[image(2), image(3)] if with_images else []),
    ]  # fmt: skip
