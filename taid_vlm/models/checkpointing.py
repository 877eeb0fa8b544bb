"""Activation (gradient) checkpointing for every supported family and the composed VLM.

At 4k-token multimodal sequences the activations of a 2B student outgrow its weights; keeping
only each layer's input and recomputing the layer in backward trades ~1/3 more compute for most
of that memory. Two mechanisms cover every model here:

- transformers models (each family's LM and its own vision encoder, and the composed VLM's LM)
  checkpoint every ``GradientCheckpointingLayer`` through ``gradient_checkpointing_enable``;
- timm / open_clip encoders inside the composed VLM checkpoint their blocks through their
  library's ``set_grad_checkpointing``.

Non-reentrant checkpointing is used throughout: it works with frozen inputs, with FSDP2 and
with the chunked loss (which only sees the final hidden states).
"""

from __future__ import annotations

import warnings

import torch


def enable_gradient_checkpointing(model: torch.nn.Module) -> list[str]:
    """Turn checkpointing on wherever the model supports it; returns the parts that got it.

    Raises when nothing could be checkpointed, so ``gradient_checkpointing: true`` never
    silently does nothing.
    """
    parts: list[str] = []
    if getattr(model, "supports_gradient_checkpointing", False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the method's rename in transformers 5
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        parts += sorted({_top_name(name) for name, m in model.named_modules() if getattr(m, "gradient_checkpointing", False)})
    for name, module in model.named_modules():
        setter = getattr(module, "set_grad_checkpointing", None)
        if callable(setter) and not isinstance(module, type(model)) and _is_library_encoder(module):
            setter(True)
            parts.append(name)
    if not parts:
        raise ValueError(
            f"gradient_checkpointing=true, but {type(model).__name__} has no layer that supports it; "
            "set gradient_checkpointing=false"
        )
    return parts


def _is_library_encoder(module: torch.nn.Module) -> bool:
    """timm models and open_clip visual towers (not transformers modules, which the first path covers)."""
    return not hasattr(module, "gradient_checkpointing_enable") and type(module).__module__.split(".")[0] in ("timm", "open_clip")


def _top_name(name: str) -> str:
    """``model.language_model.layers.3`` -> ``model.language_model`` (the stack the layer sits in)."""
    parts = name.split(".")
    while parts and (parts[-1].isdigit() or parts[-1] in ("layers", "layer", "blocks", "h")):
        parts.pop()
    return ".".join(parts) or "(model)"
