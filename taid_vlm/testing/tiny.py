"""Tiny random models and processors for every supported family, built offline.

Tests and docs need a real checkpoint of each family (config, weights, tokenizer, image and video
processors, chat template) that saves and reloads like a hub model, without a hub. Everything
here is built from transformers ``*Config`` classes with tiny dimensions and random weights.

All tiny tokenizers share ONE vocabulary (a BPE trained once on the project's base corpus with
the union of every family's special tokens), so any two tiny models, of the same family or not,
are vocabulary-compatible: what differs between families is only which tokens the processor
and chat template use. ``build_tiny(..., vocabulary="other")`` builds on a second, genuinely
different BPE (fewer merges over the same texts, the special tokens in another order, so other
ids and other splits): the pair a cross-tokenizer distillation needs (docs/CROSS-TOKENIZER.md).
Chat templates are faithful, shortened versions of each family's real one, so the adapter meets
the same quirks (default system prompts, "Assistant: " spacing, image-first parts, Qwen3's empty
thinking block, Gemma's "model" role and system-in-user turn) that it meets on real checkpoints.
PaliGemma's processor appends its <loc>/<seg> tokens after the shared ids, which leaves the shared
range as it is.
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
    "<think>", "</think>",  # Qwen3, Qwen3.5
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",  # Gemma
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",  # Gemma 3
    "<|image|>",  # Llama 3.2 Vision (Mllama)
    "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]",  # Mistral, Pixtral
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

# Qwen3 (hybrid thinking): ChatML; the last answer after the last user turn is rendered after an
# empty <think></think> block, earlier answers bare; with enable_thinking=false the generation
# prompt ends with that block too.
_QWEN3_THINK = (
    "{%- set ns = namespace(last_query=-1) %}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.last_query = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' and loop.last and loop.index0 > ns.last_query %}"
    "{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)
QWEN3_TEMPLATE = _QWEN3_THINK  # text content is a string, so the image branch is never taken
QWEN3_5_TEMPLATE = _QWEN3_THINK

# Qwen3-VL-Instruct: ChatML without a default system prompt, images as vision_start/pad/end in place.
QWEN3_VL_TEMPLATE = QWEN2_VL_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}", ""
)

# Gemma 3 (and Gemma 3 text): no system role (its text opens the first user turn), the assistant
# is "model", content trimmed, images as <start_of_image> in place, <end_of_turn> ends turns.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- else -%}{%- set prefix = messages[0]['content'][0]['text'] | trim + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Llama 3.2 Vision: Llama 3 headers, one <|image|> per image in place, trimmed text.
MLLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

# Mistral Small 3.1 (Mistral3): a default system prompt, [INST] ... [/INST] user turns with
# [IMG] in place, the answer right after [/INST] and closed by eos; no generation prompt.
MISTRAL3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] != 'system' %}{{- '[SYSTEM_PROMPT]You are a helpful assistant.[/SYSTEM_PROMPT]' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' }}"
    "{%- for part in message['content'] %}{{- part['text'] }}{%- endfor %}{{- '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' }}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '[IMG]' }}{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{{- '[/INST]' }}"
    "{%- else %}{%- for part in message['content'] %}{{- part['text'] }}{%- endfor %}{{- eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# LLaVA-NeXT (llava-v1.6-mistral): "[INST] <image>\ntext [/INST] answer</s>", images first.
LLAVA_NEXT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{{- '<<SYS>>\n' }}{%- for part in message['content'] %}{{- part['text'] }}{%- endfor %}{{- '\n<</SYS>>\n\n' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST] ' }}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{- '<image>\n' }}{%- endfor %}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{- part['text'] }}{%- endfor %}"
    "{{- ' [/INST]' }}"
    "{%- else %}{{- ' ' }}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{- part['text'] }}{%- endfor %}"
    "{{- eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
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
    "qwen3": QWEN3_TEMPLATE,
    "qwen3_vl": QWEN3_VL_TEMPLATE,
    "qwen3_5": QWEN3_5_TEMPLATE,
    "gemma3": GEMMA3_TEMPLATE,
    "mllama": MLLAMA_TEMPLATE,
    "mistral3": MISTRAL3_TEMPLATE,
    "llava_next": LLAVA_NEXT_TEMPLATE,
}

# ---- tokenizers ------------------------------------------------------------------------------


VOCABULARIES = ("shared", "other")
_VOCABULARY: ContextVar[str] = ContextVar("tiny_vocabulary", default="shared")


OTHER_FEWER_MERGES = 180  # the "other" vocabulary: this many merges fewer than "shared", over the same texts


@lru_cache(maxsize=2)
def _vocabulary(name: str = "shared") -> str:
    """Train a tiny BPE (about a second) and keep it serialised for cheap copies.

    ``shared``: the one vocabulary of every tiny model. ``other``: the same texts with
    ``OTHER_FEWER_MERGES`` fewer merges and the family special tokens in reverse order, so ids,
    merges and splits differ from ``shared`` ("blue" is "blu" + "e"; ``check_vocab_compatible``
    refuses the pair).
    """
    if name not in VOCABULARIES:
        raise ValueError(f"tiny vocabulary must be one of {VOCABULARIES}, got {name!r}")
    if name == "shared":
        tokenizer = train_bpe_tokenizer(_TINY_CORPUS, vocab_size=1024, extra_special_tokens=TINY_SPECIAL_TOKENS)
    else:
        size = Tokenizer.from_str(_vocabulary("shared")).get_vocab_size() - OTHER_FEWER_MERGES
        tokenizer = train_bpe_tokenizer(_TINY_CORPUS, vocab_size=size, extra_special_tokens=TINY_SPECIAL_TOKENS[::-1])
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // 2  # two attention heads

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


_GEMMA_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


def _gemma3_text_config(size: _Size, tok: PreTrainedTokenizerFast, softcap: float | None):
    from transformers import Gemma3TextConfig

    head = size.head_dim
    return Gemma3TextConfig(
        **size.lm(tok), head_dim=head, query_pre_attn_scalar=head, sliding_window=64,
        final_logit_softcapping=softcap,
    )  # fmt: skip


def _build_text(family: str, size: _Size, final_logit_softcapping: float | None = None, **_: Any):
    """Text LMs. ``final_logit_softcapping`` (gemma3_text): logits become cap * tanh(logits / cap)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    if family == "llama":
        tok = tiny_tokenizer(size.chat_template("llama3"), "<|begin_of_text|>", "<|eot_id|>")
        config = LlamaConfig(**size.lm(tok))
    elif family == "qwen3":
        tok = tiny_tokenizer(size.chat_template("qwen3"), "<|begin|>", "<|im_end|>")
        config = Qwen3Config(**size.lm(tok), head_dim=size.head_dim)
    elif family == "gemma3_text":
        tok = tiny_tokenizer(size.chat_template("gemma3"), "<bos>", "<eos>")
        config = _gemma3_text_config(size, tok, final_logit_softcapping)
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


def _build_qwen3_vl(family: str, size: _Size, image_size: int = 64):
    """Qwen3-VL / Qwen3.5: 16 px patches merged 2x2, so an S px square image gives (S/32)^2 tokens.

    Qwen3.5's LM mixes Gated DeltaNet (linear attention) and full-attention layers (3:1 in the real
    ones); the tiny one ends with one full-attention layer after ``num_layers - 1`` linear ones,
    and has at least one of each (two layers when ``num_layers`` is 1).
    """
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    _check_patch_multiple(family, image_size, 32)
    tok = tiny_tokenizer(
        size.chat_template(family), "<|begin|>", "<|im_end|>",
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )  # fmt: skip
    head = size.head_dim
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(head),
            "mrope_interleaved": True}
    text = dict(size.lm(tok), head_dim=head, rope_parameters=rope)
    vision = dict(
        depth=1, hidden_size=size.hidden_size, intermediate_size=2 * size.hidden_size, num_heads=2,
        out_hidden_size=size.hidden_size, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
        num_position_embeddings=16,
    )  # fmt: skip
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig as Config, Qwen3VLForConditionalGeneration as Model

        vision["deepstack_visual_indexes"] = [0]
    else:
        from transformers import Qwen3_5Config as Config, Qwen3_5ForConditionalGeneration as Model

        layers = max(2, size.num_layers)
        text.update(
            num_hidden_layers=layers, layer_types=["linear_attention"] * (layers - 1) + ["full_attention"],
            linear_conv_kernel_dim=4, linear_key_head_dim=head, linear_value_head_dim=head,
            linear_num_key_heads=1, linear_num_value_heads=2, rope_parameters=dict(rope, partial_rotary_factor=1.0),
        )  # fmt: skip
    config = Config(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    pixels = image_size * image_size
    edges = {"shortest_edge": pixels, "longest_edge": pixels}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=edges, patch_size=16, merge_size=2),
        tokenizer=tok,
        video_processor=Qwen3VLVideoProcessor(size=edges, patch_size=16, merge_size=2),
        chat_template=tok.chat_template,
    )
    return Model(config), processor


def _siglip(size: _Size, image_size: int, patch_size: int, **extra: Any):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**size.vision(image_size, patch_size), **extra)


def _build_gemma3(
    family: str, size: _Size, image_size: int = 32, patch_size: int = 8, tokens_per_image: int = 16,
    final_logit_softcapping: float | None = None,
):
    """Gemma 3: a SigLIP tower whose (S/patch)^2 patches are average-pooled to ``tokens_per_image``
    soft tokens, written as "\\n\\n<start_of_image>" + soft tokens + "<end_of_image>\\n\\n"."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    _check_patch_multiple(family, image_size, patch_size)
    side = image_size // patch_size
    if round(tokens_per_image**0.5) ** 2 != tokens_per_image or side % round(tokens_per_image**0.5):
        raise ValueError(f"tiny gemma3: tokens_per_image must be a square whose side divides {side}")
    tok = tiny_tokenizer(size.chat_template("gemma3"), "<bos>", "<eos>", _GEMMA_TOKENS)
    config = Gemma3Config(
        text_config=_gemma3_text_config(size, tok, final_logit_softcapping),
        vision_config=_siglip(size, image_size, patch_size),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tok,
        image_seq_length=tokens_per_image,
        chat_template=tok.chat_template,
    )
    return Gemma3ForConditionalGeneration(config), processor


def _build_paligemma(
    family: str, size: _Size, image_size: int = 32, patch_size: int = 8, final_logit_softcapping: float | None = 30.0,
):
    """PaliGemma 2 (a Gemma 2 LM, logits softcapped at 30 like the real one): every image is
    (S/patch)^2 tokens in front of the prompt; no chat template (prefix + suffix)."""
    from transformers import Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers import SiglipImageProcessor

    _check_patch_multiple(family, image_size, patch_size)
    tok = tiny_tokenizer(None, "<bos>", "<eos>", {"image_token": "<image>"})
    seq = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = seq
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)  # adds <loc>/<seg> tokens
    head = size.head_dim
    text = Gemma2Config(
        **size.lm(tok), head_dim=head, query_pre_attn_scalar=head, sliding_window=64,
        final_logit_softcapping=final_logit_softcapping,
    )  # fmt: skip
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=_siglip(size, image_size, patch_size, projection_dim=size.hidden_size),
        image_token_index=tok.image_token_id,
        projection_dim=size.hidden_size,
        hidden_size=size.hidden_size,
        vocab_size=text.vocab_size,
    )
    return PaliGemmaForConditionalGeneration(config), processor


def _build_llava_next(family: str, size: _Size, image_size: int = 32, patch_size: int = 8):
    """LLaVA-NeXT (CLIP, CLS dropped) and LLaVA-OneVision (SigLIP): "anyres" tiling on the grid
    [[S, S], [S, 2S], [2S, S]], so a square image is one tile plus the base view: 2 (S/patch)^2
    tokens plus one image-newline token per row of the tile."""
    from transformers import CLIPVisionConfig, LlamaConfig, Qwen2Config

    _check_patch_multiple(family, image_size, patch_size)
    grid = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    vision = size.vision(image_size, patch_size)
    if family == "llava_next":
        from transformers import LlavaNextConfig as Config, LlavaNextForConditionalGeneration as Model
        from transformers import LlavaNextImageProcessor, LlavaNextProcessor

        tok = tiny_tokenizer(size.chat_template("llava_next"), "<s>", "</s>", {"image_token": "<image>"})
        config = Config(
            vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**size.lm(tok)),
            image_token_index=tok.image_token_id, image_grid_pinpoints=grid, vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )  # fmt: skip
        edge = {"height": image_size, "width": image_size}
        processor = LlavaNextProcessor(
            image_processor=LlavaNextImageProcessor(
                size={"shortest_edge": image_size}, crop_size=edge, image_grid_pinpoints=grid
            ),
            tokenizer=tok, patch_size=patch_size, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, chat_template=tok.chat_template,
        )  # fmt: skip
        return Model(config), processor
    from transformers import LlavaOnevisionConfig as Config, LlavaOnevisionForConditionalGeneration as Model
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    tok = tiny_tokenizer(
        size.chat_template("llava_chatml"), "<|begin|>", "<|im_end|>", {"image_token": "<image>", "video_token": "<video>"}
    )
    config = Config(
        vision_config=_siglip(size, image_size, patch_size), text_config=Qwen2Config(**size.lm(tok)),
        image_token_index=tok.image_token_id, video_token_index=tok.video_token_id, image_grid_pinpoints=grid,
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
    )  # fmt: skip
    square = {"height": image_size, "width": image_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=grid),
        tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(size=square),
        num_image_tokens=(image_size // patch_size) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", chat_template=tok.chat_template,
    )  # fmt: skip
    return Model(config), processor


def _build_mistral3(family: str, size: _Size, image_size: int = 32, patch_size: int = 8):
    """Mistral 3 (Pixtral tower, patches merged 2x2): an S px square image gives rows x (cols [IMG]
    + [IMG_BREAK]) tokens with S/(2 patch) rows and cols, the last break replaced by [IMG_END]."""
    from transformers import (
        Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralImageProcessor, PixtralProcessor,
        PixtralVisionConfig,
    )  # fmt: skip

    _check_patch_multiple(family, image_size, 2 * patch_size)
    tok = tiny_tokenizer(size.chat_template("mistral3"), "<s>", "</s>")
    vision = PixtralVisionConfig(**size.vision(image_size, patch_size), head_dim=size.head_dim)
    config = Mistral3Config(
        vision_config=vision,
        text_config=MistralConfig(**size.lm(tok), head_dim=size.head_dim),
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
    )
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(size={"longest_edge": image_size}, patch_size=patch_size),
        tokenizer=tok, patch_size=patch_size, spatial_merge_size=2, chat_template=tok.chat_template,
    )  # fmt: skip
    return Mistral3ForConditionalGeneration(config), processor


def _build_mllama(family: str, size: _Size, image_size: int = 32, patch_size: int = 8, max_tiles: int = 2):
    """Llama 3.2 Vision: images reach the LM through cross-attention layers; the text holds one
    <|image|> token per image whatever its size (``image_size`` is the tile, up to ``max_tiles``)."""
    from transformers import (
        MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor, MllamaTextConfig,
        MllamaVisionConfig,
    )  # fmt: skip

    _check_patch_multiple(family, image_size, patch_size)
    tok = tiny_tokenizer(size.chat_template("mllama"), "<|begin_of_text|>", "<|eot_id|>", {"image_token": "<|image|>"})
    ratios = [[1, 1], [1, 2], [2, 1]] if max_tiles >= 2 else [[1, 1]]
    vision = MllamaVisionConfig(
        hidden_size=size.hidden_size, intermediate_size=2 * size.hidden_size, num_hidden_layers=1,
        num_global_layers=1, attention_heads=2, image_size=image_size, patch_size=patch_size, max_num_tiles=max_tiles,
        intermediate_layers_indices=[0], vision_output_dim=2 * size.hidden_size, supported_aspect_ratios=ratios,
    )  # fmt: skip
    lm = size.lm(tok)
    lm["num_hidden_layers"] = size.num_layers + 1  # and one cross-attention layer
    text = MllamaTextConfig(**lm, cross_attention_layers=[size.num_layers])
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=tok.image_token_id)
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(size={"height": image_size, "width": image_size}, max_image_tiles=max_tiles),
        tokenizer=tok, chat_template=tok.chat_template,
    )  # fmt: skip
    return MllamaForConditionalGeneration(config), processor


_BUILDERS: dict[str, Callable[..., tuple[torch.nn.Module, Any]]] = {
    "llama": _build_text,
    "qwen2": _build_text,
    "llava": _build_llava,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_vl,
    "idefics3": _build_idefics3,
    "smolvlm": _build_idefics3,
    "internvl": _build_internvl,
    "qwen3": _build_text,
    "gemma3_text": _build_text,
    "qwen3_vl": _build_qwen3_vl,
    "qwen3_5": _build_qwen3_vl,
    "gemma3": _build_gemma3,
    "paligemma": _build_paligemma,
    "llava_next": _build_llava_next,
    "llava_onevision": _build_llava_next,
    "mistral3": _build_mistral3,
    "mllama": _build_mllama,
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
    ``image_size`` (all VLMs; mllama: the tile), ``vision_tower`` ("clip" | "siglip", llava),
    ``patch_size``, ``tokens_per_image`` (gemma3), ``max_tiles`` (mllama),
    ``final_logit_softcapping`` (gemma3_text, gemma3; paligemma defaults to Gemma 2's 30).
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
    """Build a tiny ``family`` model and save it as a checkpoint directory ``load()`` accepts:
    config, weights, tokenizer, image and video processors, chat template. Two calls with other
    ``hidden_size`` / ``num_layers`` / ``seed`` (or image options) give a teacher and a student
    that share one tokenizer and distil together."""
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
