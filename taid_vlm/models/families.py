"""What differs between model families, kept small so one generic adapter covers them all.

A family is detected from ``config.model_type``. Most behaviour is driven by the processor
(image size, image-token expansion, image token ids, chat template): a family whose processor
follows the Hugging Face conventions (a chat template with image content parts, ``image_token``
and ``image_token_id`` on the processor, placeholders expanded by ``ProcessorMixin``) is one
line, ``Family(name, model_types)``. A family only declares what its processor cannot say:

- ``text_only``: a causal LM with a tokenizer, no processor;
- ``image_placeholder``: how one image is written when a template wants plain-string content
  (default: the processor's ``image_token``);
- ``image_token_attrs`` / ``image_token_prefixes``: tokens an image expands into besides the
  image token (begin/end/row markers), never distilled;
- ``images_expand=False``: cross-attention images (Mllama): each image stays ONE ``<|image|>``
  token in the text, the pixels reach the LM through cross-attention, so responses are found at
  the same distance from the end of the sequence wherever the images are;
- ``prompt_format="prefix_suffix"``: no chat template; the processor takes a prompt prefix and
  the answer as a ``suffix`` (PaliGemma), see ``prefix_and_suffix``;
- ``hidden_states``: how to reach the final hidden state the LM head reads, when it is not
  ``model.model(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..data.records import IMAGE_PLACEHOLDER, Record

HiddenStates = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    text_only: bool = False
    # What one image looks like in a plain-string prompt (a template without content parts);
    # None: the processor's image_token.
    image_placeholder: str | None = None
    # Processor (or tokenizer) attributes holding token strings that belong to an image, besides
    # the image token itself, and prefixes of such tokens: the model never predicts them, so they
    # are never distilled.
    image_token_attrs: tuple[str, ...] = ()
    image_token_prefixes: tuple[str, ...] = ()
    # False: images stay one token each in the text (cross-attention), nothing is expanded.
    images_expand: bool = True
    # "chat": a chat template renders the record; "prefix_suffix": prompt prefix + answer suffix.
    prompt_format: str = "chat"
    # The final hidden states the LM head reads, when ``model.model(**inputs)`` does not give them.
    hidden_states: HiddenStates | None = None


def _composed_final_hidden(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The composed VLM merges image features into the embeddings, then runs its LM's decoder."""
    input_ids = inputs["input_ids"]
    embeds = model.get_input_embeddings()(input_ids)
    if inputs.get("pixel_values") is not None:
        embeds = model.merge_image_features(input_ids, embeds, model.get_image_features(inputs["pixel_values"]))
    decoder = model.get_decoder()
    out = decoder(inputs_embeds=embeds, attention_mask=inputs.get("attention_mask"), use_cache=False, return_dict=True)
    return out.last_hidden_state


_QWEN_VL = dict(image_placeholder="<|vision_start|><|image_pad|><|vision_end|>", image_token_attrs=("video_token",))

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), text_only=True),
    Family("qwen2", ("qwen2",), text_only=True),
    Family("qwen3", ("qwen3",), text_only=True),
    Family("gemma3_text", ("gemma3_text",), text_only=True),
    Family("llava", ("llava",), image_placeholder="<image>\n"),
    Family("llava_next", ("llava_next",), image_placeholder="<image>\n"),
    Family("llava_onevision", ("llava_onevision",), image_placeholder="<image>\n", image_token_attrs=("video_token",)),
    Family("qwen2_vl", ("qwen2_vl", "qwen2_5_vl"), **_QWEN_VL),
    Family("qwen3_vl", ("qwen3_vl",), **_QWEN_VL),
    Family("qwen3_5", ("qwen3_5",), **_QWEN_VL),
    Family(
        "idefics3",
        ("idefics3", "smolvlm"),
        image_placeholder="<image>",
        image_token_attrs=("fake_image_token", "global_image_tag", "global_image_token", "video_token"),
        image_token_prefixes=("<row_",),  # tile position markers <row_1_col_1> ...
    ),
    Family(
        "internvl",
        ("internvl",),
        image_placeholder="<IMG_CONTEXT>\n",
        image_token_attrs=("start_image_token", "end_image_token", "video_token"),
    ),
    Family("gemma3", ("gemma3",), image_token_attrs=("boi_token", "eoi_token")),
    Family("paligemma", ("paligemma",), prompt_format="prefix_suffix"),
    Family("mistral3", ("mistral3",), image_token_attrs=("image_break_token", "image_end_token")),
    Family("mllama", ("mllama",), images_expand=False),
    # taid_vlm.models.composed (MODEL_TYPE in composed/configuration.py): timm/open_clip encoder + projector + LM
    Family("composed", ("taid_composed_vlm",), image_placeholder="<image>", hidden_states=_composed_final_hidden),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def detect_family(model_type: str, source: str = "model") -> Family:
    """The family of a ``config.model_type``; an unknown one is an error listing what works."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"{source}: model_type {model_type!r} is not a supported family. Supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}. Other architectures need a family entry in "
        "taid_vlm/models/families.py."
    )


# ---- records -> a family's chat-template messages ------------------------------------------------


def uses_content_parts(chat_template: str) -> bool:
    """Does the template read content as parts ({"type": "image"} / {"type": "text"})?

    Hub VLM templates do (they iterate ``message['content']`` and test ``['type']``); ChatML,
    the plain default and text-model templates read ``message['content']`` as a string.
    """
    return "'type'" in chat_template or '"type"' in chat_template or ".type" in chat_template


def template_messages(
    record: Record, family: Family, content_parts: bool, image_placeholder: str | None = None
) -> list[dict[str, Any]]:
    """Translate a record's messages into what the family's chat template expects.

    ``<image>`` placeholders become image parts (or ``image_placeholder``, the family's own
    string, when the template reads strings); a record with images but no placeholder gets them
    in front of its first user turn, as the record contract says.
    """
    messages = _with_leading_images(record)
    placeholder = image_placeholder or family.image_placeholder
    out = []
    for i, m in enumerate(messages):
        role, text = m["role"], m["content"]
        if IMAGE_PLACEHOLDER in text and (role != "user" or family.text_only):
            where = "for a text-only model" if family.text_only else f"in a {role!r} message (only user turns)"
            raise ValueError(f"record {record.id!r}, message {i}: {IMAGE_PLACEHOLDER} {where} is not supported")
        if not content_parts:
            if placeholder and placeholder != IMAGE_PLACEHOLDER:
                text = text.replace(IMAGE_PLACEHOLDER, placeholder)
            out.append({"role": role, "content": text})
        else:
            out.append({"role": role, "content": _parts(text)})
    return out


def prefix_and_suffix(record: Record, image_token: str, add_generation_prompt: bool) -> tuple[str, str | None]:
    """A record as a ``prompt_format="prefix_suffix"`` processor (PaliGemma) takes it.

    There is no chat template: the prefix is every image token (all images come first, as the
    processor puts them) followed by the text of every message before the LAST assistant turn,
    one message per line; the suffix is that last answer, which the processor tokenizes after
    the prefix with ``token_type_ids`` 1 (causal attention; the prefix attends bidirectionally)
    and ends with eos. So the response is located by the processor itself, not by searching
    text: exactly the suffix tokens, eos included. Earlier answers are context, not distilled.
    A prompt (``add_generation_prompt``, or a record without an answer) is all of its messages as
    the prefix, no suffix.
    """
    messages = record.messages
    last = None if add_generation_prompt else max(
        (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None
    )
    context = messages if last is None else messages[:last]
    lines = [m["content"].replace(IMAGE_PLACEHOLDER, "").strip() for m in context]
    prefix = image_token * len(record.images) + "\n".join(line for line in lines if line)
    return prefix, None if last is None else messages[last]["content"]


def _with_leading_images(record: Record) -> list[dict[str, str]]:
    messages = [dict(m) for m in record.messages]
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if record.images and not placeholders:
        first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first_user is None:
            raise ValueError(f"record {record.id!r} has images but no user turn to attach them to")
        messages[first_user]["content"] = IMAGE_PLACEHOLDER * len(record.images) + messages[first_user]["content"]
    return messages


def _parts(text: str) -> list[dict[str, str]]:
    parts: list[dict[str, str]] = []
    pieces = text.split(IMAGE_PLACEHOLDER)
    for k, piece in enumerate(pieces):
        if k:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts or [{"type": "text", "text": ""}]


# ---- image tokens ------------------------------------------------------------------------------


def image_token_ids(processor: Any, family: Family) -> list[int]:
    """Ids of every token an image expands into; they are masked out of any distillation."""
    if family.text_only:
        return []
    tokenizer = processor.tokenizer
    ids: set[int] = set()
    for attr in ("image_token_id", "video_token_id"):
        value = getattr(processor, attr, None)
        if isinstance(value, int):
            ids.add(value)
    declared = getattr(processor, "image_token_ids", None)  # transformers >= 5: BOI/EOI/row/col ids
    if isinstance(declared, (list, tuple)):
        ids.update(i for i in declared if isinstance(i, int))
    strings = [getattr(processor, a, None) for a in ("image_token", *family.image_token_attrs)]
    strings += [getattr(tokenizer, a, None) for a in family.image_token_attrs]
    vocab = tokenizer.get_vocab()
    ids.update(vocab[s] for s in strings if isinstance(s, str) and s in vocab)
    if family.image_token_prefixes:
        ids.update(v for k, v in vocab.items() if k.startswith(family.image_token_prefixes))
    unk = tokenizer.unk_token_id
    return sorted(i for i in ids if i is not None and i != unk)


# ---- the LM head and the hidden state it reads ----------------------------------------------------


def head_softcap(model: torch.nn.Module) -> float | None:
    """The final-logit softcap of the model's head (Gemma 2, PaliGemma 2, Gemma 3 where set):
    its logits are ``cap * tanh(lm_head(hidden) / cap)``; None when they are not capped."""
    value = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    return float(value) if value else None


def head_is_linear(model: torch.nn.Module) -> bool:
    """True when logits are ``lm_head(final hidden)``, up to the final-logit softcap.

    The chunked engine recomputes logits from hidden states and head weights and applies the
    softcap itself (``head_softcap``, inside each chunk, gradient included), so only a head that
    scales logits some other way must hand over logits instead.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return False
    text_config = model.config.get_text_config()
    for attr in ("logit_scale", "logits_scaling", "output_multiplier_scale"):
        value = getattr(text_config, attr, None)
        if value not in (None, 1, 1.0):
            return False
    return True


def final_hidden_states(model: torch.nn.Module, inputs: dict[str, torch.Tensor], family: Family) -> torch.Tensor:
    """[B, T, H] final (normed) hidden states, without computing the [B, T, V] logits.

    Every supported hub ``*ForCausalLM`` / ``*ForConditionalGeneration`` is
    ``lm_head(self.model(...)[0])``, so the inner model gives exactly what the head reads. A
    peft-wrapped model is unwrapped first (its adapters live inside the base model's layers).
    """
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if family.hidden_states is not None:
        return family.hidden_states(base, inputs)
    inner = getattr(base, "model", None)
    if not isinstance(inner, torch.nn.Module):
        raise TypeError(f"{type(base).__name__} has no inner .model; ask for logits (return_hidden=False)")
    return inner(**inputs, use_cache=False, return_dict=True).last_hidden_state
