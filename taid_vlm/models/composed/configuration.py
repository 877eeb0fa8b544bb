"""Configuration of the composed VLM: a vision encoder spec, a projector and a nested LM config.

The vision encoder is named, not embedded: ``"timm:<name>"`` or ``"open_clip:<name>"`` plus the
keyword overrides that library accepts (``depth``, ``embed_dim``, ``patch_size`` for a timm
ViT; ``width``, ``layers``, ``patch_size`` for an open_clip ViT). Rebuilding it from the name and
loading the saved state dict is what makes the checkpoint self-contained without a custom
serialiser. The language model is any transformers causal LM config, stored as ``text_config``.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

MODEL_TYPE = "taid_composed_vlm"
VISION_LIBRARIES = ("timm", "open_clip")


class ComposedVLMConfig(PretrainedConfig):
    r"""Config for :class:`ComposedVLMForConditionalGeneration`.

    Args:
        vision: ``"timm:<model name>"`` or ``"open_clip:<model config name>"``.
        vision_kwargs: overrides passed to the library's constructor (e.g. ``{"depth": 2}``).
        vision_pretrained: provenance only: whether the factory loaded the library's pretrained
            weights. Loading a saved model never contacts a hub; the weights are in the checkpoint.
        image_size: square input side in pixels (what the processor resizes to).
        num_image_tokens: image features handed to the LM per image; the encoder's patch grid is
            average-pooled to this many (a square grid when it is a perfect square). None: the
            encoder's full grid, resolved once at first build.
        vision_feature_dim: channels of the encoder's feature map; probed once at first build.
        image_mean / image_std: the encoder's normalisation; probed once at first build.
        projector_hidden_size: hidden width of the MLP projector (default: LM hidden size).
        projector_depth: number of linear layers in the projector (1 = linear, 2 = LLaVA-1.5).
        projector_act: activation between projector layers (a transformers ACT2FN name).
        freeze_vision: keep the encoder's weights fixed (no grad) and its norms in eval mode.
        image_token_id: id of the ``<image>`` token whose embeddings are replaced by features.
        text_config: the causal LM config (dict with ``model_type``, or a config object).
    """

    model_type = MODEL_TYPE
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    vision: str = "timm:vit_tiny_patch16_224"
    vision_kwargs: dict | None = None
    vision_pretrained: bool | str = False
    image_size: int = 224
    num_image_tokens: int | None = 49
    vision_feature_dim: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    projector_hidden_size: int | None = None
    projector_depth: int = 2
    projector_act: str = "gelu"
    freeze_vision: bool = False
    image_token_id: int = 4
    text_config: dict | PretrainedConfig | None = None

    def __post_init__(self, **kwargs: Any):
        super().__post_init__(**kwargs)
        self.vision_kwargs = dict(self.vision_kwargs or {})
        _check_vision_spec(self.vision)
        _check_positive("image_size", self.image_size)
        if self.num_image_tokens is not None:
            _check_positive("num_image_tokens", self.num_image_tokens)
        _check_positive("projector_depth", self.projector_depth)
        if self.image_token_id < 0 or self.image_token_id >= self.text_config.vocab_size:
            raise ValueError(
                f"ComposedVLMConfig: image_token_id={self.image_token_id} is outside the LM vocabulary "
                f"(vocab_size={self.text_config.vocab_size}); pass the tokenizer's <image> id"
            )


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ComposedVLMConfig: {name} must be a positive integer, got {value!r}")


def _check_vision_spec(spec: Any) -> None:
    library, _, name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if library not in VISION_LIBRARIES or not name:
        raise ValueError(
            f"ComposedVLMConfig: vision={spec!r} must look like 'timm:<model name>' or "
            "'open_clip:<model config name>' (e.g. 'timm:vit_tiny_patch16_224', 'open_clip:ViT-B-32')"
        )
