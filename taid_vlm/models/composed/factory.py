"""Sized composed VLMs, built offline from a size name, a spec string or a YAML-like dict.

Sizes (image 32 px for ``tiny``, 64 px otherwise; Llama-style LM with tied embeddings; a ViT
from timm's ``vit_tiny_patch16_224`` recipe with patch 8 and the overrides below):

=====  =========================  ====================  ============  ===========  ============
size   vision ViT (patch grid)    LM (Llama)            image tokens  parameters   meant for
=====  =========================  ====================  ============  ===========  ============
tiny   depth 2, width 64 (4x4)    hidden 64, 2 layers   16            0.26 M       unit tests
small  depth 4, width 128 (8x8)   hidden 192, 4 layers  16 (pooled)   2.7 M        demo student
base   depth 6, width 256 (8x8)   hidden 384, 6 layers  64            14.9 M       demo teacher
=====  =========================  ====================  ============  ===========  ============

Parameter counts are for a 1024-token vocabulary.

Spec strings (what a CLI flag or a YAML ``model:`` string holds)::

    composed:<size>[?key=value&key=value...]

    composed:tiny
    composed:small?image_size=112&num_image_tokens=49
    composed:base?vision=timm:resnet18&freeze_vision=true
    composed:small?vision.depth=2&text.num_hidden_layers=3&text.model_type=qwen2

Keys: ``image_size``, ``num_image_tokens``, ``vision``, ``vision_pretrained``, ``freeze_vision``,
``projector_depth``, ``projector_hidden_size``, ``projector_act``, ``vocab_size``, ``seed``
(:data:`SPEC_KEYS`); ``vision.<name>=v`` sets a keyword of the encoder's constructor,
``text.<name>=v`` a field of the LM config (``text.model_type=qwen2`` swaps the LM family).
Values are parsed as int, float, ``true``/``false``, ``none``, else kept as strings. A dict
spec holds the same keys, plus ``size``, with ``vision_kwargs`` and ``text_config`` as nested
dicts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..tokenizer import train_bpe_tokenizer
from .configuration import ComposedVLMConfig
from .modeling import ComposedVLMForConditionalGeneration
from .processing import ComposedVLMProcessor, build_processor, image_token_id_of

SPEC_PREFIX = "composed"

_VIT = "timm:vit_tiny_patch16_224"
_LM = {"model_type": "llama", "tie_word_embeddings": True, "max_position_embeddings": 2048}

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "image_size": 32,
        "num_image_tokens": 16,
        "vision": _VIT,
        "vision_kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
        "text_config": {**_LM, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2},
    },
    "small": {
        "image_size": 64,
        "num_image_tokens": 16,
        "vision": _VIT,
        "vision_kwargs": {"patch_size": 8, "depth": 4, "embed_dim": 128, "num_heads": 4},
        "text_config": {**_LM, "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 2},
    },
    "base": {
        "image_size": 64,
        "num_image_tokens": 64,
        "vision": _VIT,
        "vision_kwargs": {"patch_size": 8, "depth": 6, "embed_dim": 256, "num_heads": 4},
        "text_config": {**_LM, "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6,
                        "num_attention_heads": 6, "num_key_value_heads": 2},
    },
}

# Keys a spec may set, beyond ``size``.
SPEC_KEYS = (
    "image_size", "num_image_tokens", "vision", "vision_kwargs", "vision_pretrained", "text_config",
    "freeze_vision", "projector_depth", "projector_hidden_size", "projector_act", "vocab_size", "seed",
)


def build_composed_vlm(
    size: str | dict[str, Any] = "tiny",
    tokenizer: PreTrainedTokenizerBase | None = None,
    texts: Iterable[str] | None = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
    num_image_tokens: int | None = None,
    vision: str | None = None,
    vision_kwargs: dict[str, Any] | None = None,
    vision_pretrained: bool | str | None = None,
    text_config: dict[str, Any] | None = None,
    freeze_vision: bool | None = None,
    projector_depth: int | None = None,
    projector_hidden_size: int | None = None,
    projector_act: str | None = None,
    seed: int | None = None,
) -> tuple[ComposedVLMForConditionalGeneration, ComposedVLMProcessor]:
    """A fresh model and its processor. Keyword arguments override the size (or dict spec).

    ``tokenizer``: share one between teacher and student; when None a byte-level BPE of
    ``vocab_size`` (default 1024) is trained on ``texts``. ``num_image_tokens`` defaults to the
    size's value; when ``vision`` or ``image_size`` is changed without it, to the encoder's full
    patch grid. ``vision_kwargs`` replace the size's encoder overrides when ``vision`` changes and
    update them otherwise; ``text_config`` updates the size's LM fields. ``seed`` (default 0)
    makes the initial weights reproducible without touching the global RNG.
    """
    spec = _as_spec_dict(size)
    overrides = {
        "vocab_size": vocab_size, "image_size": image_size, "num_image_tokens": num_image_tokens,
        "vision": vision, "vision_kwargs": vision_kwargs, "vision_pretrained": vision_pretrained,
        "text_config": text_config, "freeze_vision": freeze_vision, "projector_depth": projector_depth,
        "projector_hidden_size": projector_hidden_size, "projector_act": projector_act, "seed": seed,
    }
    spec = _merge(spec, {k: v for k, v in overrides.items() if v is not None})
    if tokenizer is None:
        tokenizer = train_bpe_tokenizer(texts or [], vocab_size=int(spec.get("vocab_size") or 1024))
    config = composed_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("seed") or 0))
        model = ComposedVLMForConditionalGeneration(config)
    if spec.get("vision_pretrained"):
        model.vision_tower.load_library_weights(spec["vision_pretrained"])
    model.eval()
    return model, build_processor(model.config, tokenizer)


def build_from_spec(
    spec: str | dict[str, Any],
    tokenizer: PreTrainedTokenizerBase | None = None,
    texts: Iterable[str] | None = None,
) -> tuple[ComposedVLMForConditionalGeneration, ComposedVLMProcessor]:
    """``build_from_spec("composed:small?image_size=64")`` or the same as a dict (see module doc)."""
    return build_composed_vlm(parse_spec(spec) if isinstance(spec, str) else spec, tokenizer=tokenizer, texts=texts)


def parse_spec(spec: str) -> dict[str, Any]:
    """``"composed:small?vision.depth=2&seed=1"`` -> ``{"size": "small", "vision_kwargs": {"depth": 2}, "seed": 1}``."""
    head, _, query = spec.partition("?")
    prefix, _, size = head.partition(":")
    if prefix != SPEC_PREFIX or size not in SIZES:
        raise ValueError(
            f"model spec {spec!r}: expected '{SPEC_PREFIX}:<size>[?key=value&...]' with size one of "
            f"{sorted(SIZES)}, e.g. 'composed:small?image_size=64&num_image_tokens=16'"
        )
    out: dict[str, Any] = {"size": size}
    for item in filter(None, query.split("&")):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"model spec {spec!r}: {item!r} is not key=value")
        group, dot, field = key.partition(".")
        if dot and group in ("vision", "text"):
            out.setdefault("vision_kwargs" if group == "vision" else "text_config", {})[field] = _scalar(raw)
        else:
            out[key] = _scalar(raw)
    _check_keys(out, spec)
    return out


def composed_config(spec: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> ComposedVLMConfig:
    """Resolve a spec dict (size + overrides) into a config whose vocabulary matches ``tokenizer``."""
    spec = _as_spec_dict(spec)
    text = dict(spec["text_config"])
    text.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return ComposedVLMConfig(
        vision=spec["vision"],
        vision_kwargs=spec["vision_kwargs"],
        vision_pretrained=spec.get("vision_pretrained") or False,
        image_size=spec["image_size"],
        num_image_tokens=spec["num_image_tokens"],
        projector_hidden_size=spec.get("projector_hidden_size"),
        projector_depth=spec.get("projector_depth") or 2,
        projector_act=spec.get("projector_act") or "gelu",
        freeze_vision=bool(spec.get("freeze_vision")),
        image_token_id=image_token_id_of(tokenizer),
        text_config=text,
    )


def _as_spec_dict(spec: str | dict[str, Any]) -> dict[str, Any]:
    """A size name or a dict spec -> the full dict: size defaults, then the spec's keys."""
    if isinstance(spec, str):
        spec = {"size": spec}
    if not isinstance(spec, dict):
        raise TypeError(f"composed VLM spec must be a size name or a dict, got {type(spec).__name__}")
    _check_keys(spec, spec)
    size = spec.get("size", "tiny")
    if size not in SIZES:
        raise ValueError(f"composed VLM size {size!r} is not one of {sorted(SIZES)}")
    return _merge({"size": size, **copy.deepcopy(SIZES[size])}, {k: v for k, v in spec.items() if k != "size"})


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overlay overrides on a resolved spec, keeping the encoder/token-count rules of the docstring."""
    out = copy.deepcopy(base)
    changes_encoder = ("vision" in overrides and overrides["vision"] != base.get("vision")) or (
        "image_size" in overrides and overrides["image_size"] != base.get("image_size")
    )
    if changes_encoder and "num_image_tokens" not in overrides:
        out["num_image_tokens"] = None  # the new encoder's full grid
    if "vision" in overrides and overrides["vision"] != base.get("vision"):
        out["vision_kwargs"] = {}
    for key, value in overrides.items():
        if key in ("vision_kwargs", "text_config"):
            out[key] = {**(out.get(key) or {}), **(value or {})}
        else:
            out[key] = value
    return out


def _check_keys(spec: dict[str, Any], where: Any) -> None:
    unknown = sorted(set(spec) - set(SPEC_KEYS) - {"size"})
    if unknown:
        raise ValueError(f"model spec {where!r}: unknown key(s) {unknown}; valid keys: size, {', '.join(SPEC_KEYS)}")


def _scalar(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
