"""Builders for tests, benchmarks and docs: tiny random models of every supported family.

Nothing in the library's training or evaluation path imports this package; it sits above
``models/`` and ``data/`` and is what tests and ``scripts/`` use to get real checkpoints offline.
"""

from .tiny import TINY_FAMILIES, build_tiny, save_tiny, tiny_records, tiny_tokenizer

__all__ = ["TINY_FAMILIES", "build_tiny", "save_tiny", "tiny_records", "tiny_tokenizer"]
