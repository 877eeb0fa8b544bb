"""What differs between model families, kept small so one generic adapter covers them all.

A family is detected from ``config.model_type``. Most behaviour is driven by the processor
(image size, image-token expansion, chat template); a family only says what the processor
cannot: whether it is text-only, how one image is written when a template wants plain-string
content, which token ids belong to images (never distilled), and how to reach the final hidden
state that the LM head reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.records import IMAGE_PLACEHOLDER, Record


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    text_only: bool
    # What one image looks like in a plain-string prompt (a template without content parts).
    image_placeholder: str | None = None
    # Processor attributes holding token strings that belong to an image, besides the image
    # token itself: the model never predicts them, so they are never distilled.
    image_token_attrs: tuple[str, ...] = ()
    # Packed rows (models/packing.py): "1d" positions restart at 0 per record; "rope_index": the
    # model's own get_rope_index gives each record's multimodal rotary positions.
    packed_positions: str = "1d"
    # Image inputs shaped [records, images, ...] (not one entry per image): flattened when packed.
    per_image_inputs: tuple[str, ...] = ()
    # Why this family cannot take packed rows (None: it can).
    packing_refused: str | None = None


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), text_only=True),
    Family("qwen2", ("qwen2",), text_only=True),
    Family("llava", ("llava",), text_only=False, image_placeholder="<image>\n"),
    Family(
        "qwen2_vl",
        ("qwen2_vl", "qwen2_5_vl"),
        text_only=False,
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        image_token_attrs=("video_token",),
        packed_positions="rope_index",
    ),
    Family(
        "idefics3",
        ("idefics3", "smolvlm"),
        text_only=False,
        image_placeholder="<image>",
        image_token_attrs=("fake_image_token", "global_image_tag", "global_image_token", "video_token"),
        per_image_inputs=("pixel_values", "pixel_attention_mask"),
    ),
    Family(
        "internvl",
        ("internvl",),
        text_only=False,
        image_placeholder="<IMG_CONTEXT>\n",
        image_token_attrs=("start_image_token", "end_image_token", "video_token"),
    ),
    # taid_vlm.models.composed (MODEL_TYPE in composed/configuration.py): timm/open_clip encoder + projector + LM
    Family("composed", ("taid_composed_vlm",), text_only=False, image_placeholder="<image>"),
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


def template_messages(record: Record, family: Family, content_parts: bool) -> list[dict[str, Any]]:
    """Translate a record's messages into what the family's chat template expects.

    ``<image>`` placeholders become image parts (or the family's own placeholder string when the
    template reads strings); a record with images but no placeholder gets them in front of its
    first user turn, as the record contract says.
    """
    messages = _with_leading_images(record)
    out = []
    for i, m in enumerate(messages):
        role, text = m["role"], m["content"]
        if IMAGE_PLACEHOLDER in text and (role != "user" or family.text_only):
            where = "for a text-only model" if family.text_only else f"in a {role!r} message (only user turns)"
            raise ValueError(f"record {record.id!r}, message {i}: {IMAGE_PLACEHOLDER} {where} is not supported")
        if not content_parts:
            if family.image_placeholder and family.image_placeholder != IMAGE_PLACEHOLDER:
                text = text.replace(IMAGE_PLACEHOLDER, family.image_placeholder)
            out.append({"role": role, "content": text})
        else:
            out.append({"role": role, "content": _parts(text)})
    return out


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
    if family.name == "idefics3":  # tile position markers
        ids.update(v for k, v in vocab.items() if k.startswith("<row_") and k.endswith(">"))
    unk = tokenizer.unk_token_id
    return sorted(i for i in ids if i is not None and i != unk)


# ---- the LM head and the hidden state it reads ----------------------------------------------------


def head_is_linear(model: torch.nn.Module) -> bool:
    """True when logits are exactly ``lm_head(final hidden)``: no softcapping or scaling.

    The chunked engine recomputes logits from hidden states and head weights, so a head that
    caps or scales logits must hand over logits instead.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return False
    text_config = model.config.get_text_config()
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        value = getattr(text_config, attr, None)
        if value not in (None, 1, 1.0):
            return False
    return True


def final_hidden_states(model: torch.nn.Module, inputs: dict[str, torch.Tensor], family: Family) -> torch.Tensor:
    """[B, T, H] final (normed) hidden states, without computing the [B, T, V] logits.

    Every supported hub ``*ForCausalLM`` / ``*ForConditionalGeneration`` is
    ``lm_head(self.model(...)[0])``, so the inner model gives exactly what the head reads.
    """
    if family.name == "composed":
        return _composed_final_hidden(model, inputs)
    inner = getattr(model, "model", None)
    if not isinstance(inner, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} has no inner .model; ask for logits (return_hidden=False)")
    return inner(**inputs, use_cache=False, return_dict=True).last_hidden_state


def _composed_final_hidden(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The composed VLM merges image features into the embeddings, then runs its LM's decoder."""
    input_ids = inputs["input_ids"]
    embeds = model.get_input_embeddings()(input_ids)
    if inputs.get("pixel_values") is not None:
        embeds = model.merge_image_features(input_ids, embeds, model.get_image_features(inputs["pixel_values"]))
    decoder = model.get_decoder()
    out = decoder(inputs_embeds=embeds, attention_mask=inputs.get("attention_mask"), position_ids=inputs.get("position_ids"),
                  use_cache=False, return_dict=True)
    return out.last_hidden_state
