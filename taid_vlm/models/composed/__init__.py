"""The composed compact VLM: a timm / open_clip vision encoder + MLP projector + any HF causal LM.

Importing this package registers the model with transformers' Auto classes (see
``registration``); ``factory`` builds sized models and their processors offline.
"""

from .configuration import ComposedVLMConfig
from .factory import SIZES, build_composed_vlm, build_from_spec, parse_spec
from .modeling import ComposedVLMForConditionalGeneration
from .processing import ComposedVLMImageProcessor, ComposedVLMProcessor, build_processor
from .registration import register_composed_vlm

__all__ = [
    "SIZES",
    "build_composed_vlm",
    "build_from_spec",
    "parse_spec",
    "ComposedVLMConfig",
    "ComposedVLMForConditionalGeneration",
    "ComposedVLMImageProcessor",
    "ComposedVLMProcessor",
    "build_processor",
    "register_composed_vlm",
]
