"""Vision encoders from timm or open_clip, reduced to a fixed number of image tokens.

Every encoder is read through one lens: its last feature map as ``[B, C, H, W]`` (ViT patch
tokens laid back on their grid, class tokens dropped; CNN stage output as is). Average pooling on
that grid then yields exactly ``num_image_tokens`` tokens, so two models with different encoders
or image sizes (a 14x14-token teacher, a 7x7-token student) speak in the same shape.
timm and open_clip are imported only when an encoder is built, keeping ``import taid_vlm`` light.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# open_clip's defaults, used when a config names no normalisation of its own.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def parse_vision_spec(spec: str) -> tuple[str, str]:
    """Split ``"timm:resnet18"`` into ``("timm", "resnet18")``."""
    library, _, name = spec.partition(":")
    if library not in ("timm", "open_clip") or not name:
        raise ValueError(f"vision encoder {spec!r}: expected 'timm:<model name>' or 'open_clip:<model config name>'")
    return library, name


def token_grid(num_image_tokens: int) -> tuple[int, int]:
    """The pooled grid (rows, cols) for a token count: square when possible, else the most square."""
    rows = math.isqrt(num_image_tokens)
    while num_image_tokens % rows:
        rows -= 1
    return rows, num_image_tokens // rows


def build_vision_encoder(
    spec: str, image_size: int, kwargs: dict[str, Any] | None = None, pretrained: bool | str = False
) -> nn.Module:
    """Create the encoder named by ``spec`` with its classifier / projection head removed."""
    library, name = parse_vision_spec(spec)
    kwargs = dict(kwargs or {})
    if library == "timm":
        return _build_timm(name, image_size, kwargs, bool(pretrained))
    return _build_open_clip(name, image_size, kwargs, pretrained)


def _build_timm(name: str, image_size: int, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ValueError(f"vision encoder 'timm:{name}': timm has no such model; see timm.list_models()")
    kwargs.setdefault("num_classes", 0)
    # ViT-like models bake the input size into their position embeddings; CNNs take any size
    # and reject the argument, so it is only passed where the model needs it.
    if "img_size" not in kwargs and timm.get_pretrained_cfg(name).fixed_input_size:
        kwargs["img_size"] = image_size
    try:
        encoder = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise ValueError(f"vision encoder 'timm:{name}': bad keyword override in {kwargs}: {e}") from None
    if hasattr(encoder, "prune_intermediate_layers"):
        encoder.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
    return encoder


def _build_open_clip(name: str, image_size: int, kwargs: dict[str, Any], pretrained: bool | str) -> nn.Module:
    import open_clip
    from open_clip.model import _build_vision_tower

    if pretrained:
        tag = pretrained if isinstance(pretrained, str) else None
        if tag is None or kwargs:
            raise ValueError(
                f"vision encoder 'open_clip:{name}': pretrained weights need a tag string "
                "(e.g. vision_pretrained='openai') and no size overrides"
            )
        visual = open_clip.create_model(name, pretrained=tag).visual
    else:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ValueError(
                f"vision encoder 'open_clip:{name}': no such open_clip model config; see open_clip.list_models()"
            )
        vision_cfg = {**cfg["vision_cfg"], **kwargs, "image_size": image_size}
        if vision_cfg.get("timm_model_name"):
            raise ValueError(
                f"vision encoder 'open_clip:{name}' wraps timm model {vision_cfg['timm_model_name']!r}; "
                f"use vision='timm:{vision_cfg['timm_model_name']}' instead"
            )
        visual = _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=cfg.get("quick_gelu", False))
    # The pooled-embedding heads are never used here: drop them so every parameter trains.
    if hasattr(visual, "prune_intermediate_layers"):
        visual.prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True)
    if hasattr(visual, "attnpool"):
        visual.attnpool = nn.Identity()
    return visual


def encoder_normalisation(encoder: nn.Module, library: str) -> tuple[list[float], list[float]]:
    """The mean/std the encoder expects its pixels normalised with."""
    if library == "timm":
        cfg = getattr(encoder, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", OPENAI_CLIP_MEAN), cfg.get("std", OPENAI_CLIP_STD)
    else:
        mean = getattr(encoder, "image_mean", None) or OPENAI_CLIP_MEAN
        std = getattr(encoder, "image_std", None) or OPENAI_CLIP_STD
    return [float(v) for v in mean], [float(v) for v in std]


def make_buffers_persistent(module: nn.Module) -> None:
    """Save every buffer with the weights.

    transformers builds a model on the meta device before loading; buffers that are not in the
    checkpoint would come back uninitialised. Saving them makes the checkpoint the single
    source of truth for the encoder, whatever library built it.
    """
    for sub in module.modules():
        sub._non_persistent_buffers_set.clear()


class VisionTower(nn.Module):
    """Encoder + grid pooling: pixels ``[B, 3, S, S]`` -> tokens ``[B, num_image_tokens, C]``."""

    def __init__(
        self,
        spec: str,
        image_size: int,
        num_image_tokens: int | None,
        kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.spec, self.kwargs = spec, dict(kwargs or {})
        self.library, self.name = parse_vision_spec(spec)
        self.image_size = image_size
        self.encoder = build_vision_encoder(spec, image_size, self.kwargs)
        make_buffers_persistent(self.encoder)
        self.grid: tuple[int, int] | None = None
        if num_image_tokens is not None:
            self.set_num_image_tokens(num_image_tokens)

    @property
    def num_image_tokens(self) -> int:
        rows, cols = self._pooled_grid()
        return rows * cols

    def _pooled_grid(self) -> tuple[int, int]:
        if self.grid is None:
            raise RuntimeError("VisionTower: num_image_tokens is unset; call probe() or set_num_image_tokens()")
        return self.grid

    def set_num_image_tokens(self, num_image_tokens: int) -> None:
        self.grid = token_grid(num_image_tokens)

    def load_library_weights(self, pretrained: bool | str) -> None:
        """Replace the encoder's weights by the library's pretrained ones (timm: True; open_clip:
        a tag such as 'openai'). Needs them in the local cache or network access."""
        source = build_vision_encoder(self.spec, self.image_size, self.kwargs, pretrained)
        self.encoder.load_state_dict(source.state_dict(), strict=True)

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's last feature map as ``[B, C, H, W]``."""
        if self.library == "open_clip":
            out = self.encoder.forward_intermediates(
                pixel_values, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NCHW"
            )
            return out["image_intermediates"][-1]
        if hasattr(self.encoder, "forward_intermediates"):
            return self.encoder.forward_intermediates(
                pixel_values, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
            )[-1]
        return self._timm_features_as_map(pixel_values)

    def _timm_features_as_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.encoder.forward_features(pixel_values)
        if features.ndim == 4:
            if getattr(self.encoder, "output_fmt", "NCHW") == "NHWC":
                features = features.permute(0, 3, 1, 2)
            return features
        tokens = features[:, getattr(self.encoder, "num_prefix_tokens", 0) :]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(
                f"vision encoder 'timm:{self.name}': cannot lay {tokens.shape[1]} tokens on a square grid"
            )
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = self._pooled_grid()
        feature_map = self.feature_map(pixel_values)
        check_grid_fits(feature_map.shape[-2:], grid, self.library, self.name)
        pooled = F.adaptive_avg_pool2d(feature_map, grid)
        return pooled.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def probe(self) -> tuple[int, tuple[int, int]]:
        """Feature channels and native grid, measured on one blank image (in eval mode, so
        batch-norm statistics are left untouched). An unset token count becomes the full grid."""
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            weight = next(self.encoder.parameters())
            blank = torch.zeros(1, 3, self.image_size, self.image_size, device=weight.device, dtype=weight.dtype)
            feature_map = self.feature_map(blank)
        finally:
            self.encoder.train(was_training)
        grid = (int(feature_map.shape[-2]), int(feature_map.shape[-1]))
        if self.grid is None:
            # Stored as a count, so resolve it the way a reload will: token_grid(rows * cols).
            self.set_num_image_tokens(grid[0] * grid[1])
        check_grid_fits(grid, self._pooled_grid(), self.library, self.name)
        return int(feature_map.shape[1]), grid


def check_grid_fits(native: tuple[int, int] | torch.Size, target: tuple[int, int], library: str, name: str) -> None:
    """Pooling may only shrink the grid: growing it would just repeat features."""
    rows, cols = int(native[0]), int(native[1])
    if target[0] > rows or target[1] > cols:
        raise ValueError(
            f"vision encoder '{library}:{name}' yields a {rows}x{cols} feature grid, too small for "
            f"{target[0] * target[1]} image tokens ({target[0]}x{target[1]}); lower num_image_tokens "
            f"to at most {rows * cols} or raise image_size"
        )
