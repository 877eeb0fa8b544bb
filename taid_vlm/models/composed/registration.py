"""Make the composed VLM loadable through transformers' Auto classes.

Run once on ``import taid_vlm.models``: afterwards ``AutoConfig``,
``AutoModelForImageTextToText``, ``AutoImageProcessor`` and ``AutoProcessor`` resolve a saved
composed VLM directory like any checkpoint of the library's own models.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration import MODEL_TYPE, ComposedVLMConfig
from .modeling import ComposedVLMForConditionalGeneration
from .processing import ComposedVLMImageProcessor, ComposedVLMProcessor


def register_composed_vlm() -> None:
    """Idempotent: registering twice (re-imports, notebooks) is harmless."""
    AutoConfig.register(MODEL_TYPE, ComposedVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(ComposedVLMConfig, ComposedVLMForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(
        ComposedVLMConfig, image_processor_classes={"torchvision": ComposedVLMImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(ComposedVLMConfig, ComposedVLMProcessor, exist_ok=True)


register_composed_vlm()
