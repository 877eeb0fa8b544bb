"""The composed VLM: vision tower -> pooled patch tokens -> MLP projector -> any HF causal LM.

LLaVA's recipe with every part swappable: the projected image tokens replace the embeddings of
the ``<image>`` token ids in the prompt, and the LM runs on the mixed sequence. The LM is a
stock ``AutoModelForCausalLM`` kept whole as ``language_model``, so its own tied embeddings,
cache, attention backends and loss apply unchanged, and its LM head is the head the distillation
loss reads.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import ComposedVLMConfig
from .vision import VisionTower, encoder_normalisation


class ComposedVLMProjector(nn.Module):
    """``depth`` linear layers from encoder channels to LM width (depth 2 is LLaVA-1.5's MLP)."""

    def __init__(self, in_features: int, out_features: int, hidden_size: int, depth: int, act: str):
        super().__init__()
        widths = [in_features] + [hidden_size] * (depth - 1) + [out_features]
        layers: list[nn.Module] = []
        for i in range(depth):
            if i:
                layers.append(ACT2FN[act])
            layers.append(nn.Linear(widths[i], widths[i + 1]))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ComposedVLMPreTrainedModel(PreTrainedModel):
    config_class = ComposedVLMConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # Attention lives in the LM, which declares what it supports; the vision encoder's own
    # attention is the library's and is unaffected by this choice.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class ComposedVLMForConditionalGeneration(ComposedVLMPreTrainedModel, GenerationMixin):
    """``forward(input_ids, attention_mask, pixel_values, labels, ...)`` -> ``CausalLMOutputWithPast``.

    ``pixel_values`` holds one image per ``<image>`` placeholder, in reading order across the batch;
    each placeholder must already be expanded to ``num_image_tokens`` image token ids (the
    processor does this).
    """

    def __init__(self, config: ComposedVLMConfig):
        super().__init__(config)
        self.vision_tower = VisionTower(
            config.vision, config.image_size, config.num_image_tokens, config.vision_kwargs
        )
        self._keep_library_init(self.vision_tower)
        if config.vision_feature_dim is None or config.num_image_tokens is None:
            config.vision_feature_dim, _ = self.vision_tower.probe()
            config.num_image_tokens = self.vision_tower.num_image_tokens
        if config.image_mean is None or config.image_std is None:
            config.image_mean, config.image_std = encoder_normalisation(
                self.vision_tower.encoder, self.vision_tower.library
            )
        text_hidden = config.text_config.hidden_size
        self.projector = ComposedVLMProjector(
            config.vision_feature_dim,
            text_hidden,
            config.projector_hidden_size or text_hidden,
            config.projector_depth,
            config.projector_act,
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()
        self.set_vision_frozen(config.freeze_vision)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loading replaces every parameter with a fresh, trainable one; re-apply the freeze the
        config records."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.set_vision_frozen(model.config.freeze_vision)
        return loaded

    @staticmethod
    def _keep_library_init(module: nn.Module) -> None:
        """timm / open_clip initialise their encoders with their own schemes; mark them done so
        transformers' generic init does not overwrite them."""
        for sub in module.modules():
            sub._is_hf_initialized = True

    # -- the parts, for adapters and trainers -------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        """The LM head: ``hidden_states[-1] @ head.weight.T`` are the logits."""
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def set_vision_frozen(self, frozen: bool) -> None:
        """Freeze or unfreeze the encoder (the config records the choice so reloads keep it)."""
        self.config.freeze_vision = bool(frozen)
        for param in self.vision_tower.parameters():
            param.requires_grad_(not frozen)
        self.vision_tower.train(self.training and not frozen)

    def train(self, mode: bool = True) -> "ComposedVLMForConditionalGeneration":
        """A frozen encoder stays in eval mode: its batch-norm statistics and dropout are part of
        the fixed function, not something training should move."""
        super().train(mode)
        if self.config.freeze_vision:
            self.vision_tower.eval()
        return self

    # -- forward ------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels ``[n_images, 3, S, S]`` -> LM-space image tokens ``[n_images, T, H]``."""
        expected = (3, self.config.image_size, self.config.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be [n_images, {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(this model's image_size), got {list(pixel_values.shape)}; use the model's processor"
            )
        encoder_dtype = next(self.vision_tower.parameters()).dtype
        features = self.vision_tower(pixel_values.to(encoder_dtype))
        return self.projector(features.to(self.projector.layers[0].weight.dtype))

    def merge_image_features(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Put the image tokens where the ``<image>`` ids are, in reading order."""
        mask = input_ids == self.config.image_token_id
        n_slots, n_features = int(mask.sum()), image_features.shape[0] * image_features.shape[1]
        if n_slots != n_features:
            raise ValueError(
                f"the prompts hold {n_slots} image token ids but {image_features.shape[0]} image(s) give "
                f"{n_features} features ({self.config.num_image_tokens} per image); each <image> must be "
                f"expanded to {self.config.num_image_tokens} image tokens (use the model's processor)"
            )
        flat = image_features.reshape(-1, image_features.shape[-1]).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), flat)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if cache is None:  # the name transformers used before 5.x
            cache = kwargs.pop("past_key_values", None)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("pixel_values need input_ids to find the <image> token positions")
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, self.get_image_features(pixel_values))
        elif input_ids is not None and _is_prefill(cache) and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError(
                "the prompts hold image tokens but no pixel_values were given; pass the images the "
                "processor returned (pixel_values)"
            )
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


def _is_prefill(cache) -> bool:
    """True when no tokens are cached yet: the step that must see the prompt's images. Later
    decoding steps carry only new tokens, which may legitimately include a generated <image>."""
    return cache is None or cache.get_seq_length() == 0
