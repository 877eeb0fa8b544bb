"""Records, loaders for real formats, and the synthetic scenes generator. No model code."""

from .records import IMAGE_PLACEHOLDER, Record, load_image

__all__ = ["IMAGE_PLACEHOLDER", "Record", "load_image"]
