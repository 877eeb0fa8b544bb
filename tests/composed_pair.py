"""The tiny teacher/student pairs several test modules distil with (saved, reloadable)."""

from __future__ import annotations

from pathlib import Path

from taid_vlm.data import load_records
from taid_vlm.demo.shapes import generate_shapes
from taid_vlm.testing.tiny import save_tiny, save_tiny_composed_pair


def save_composed_pair(root: Path, n_train: int, n_test: int) -> Path:
    """Shapes data plus a composed teacher (16 image tokens) and student (4 image tokens) under ``root``."""
    generate_shapes(root / "shapes", n_train, n_test, seed=0, image_size=32)
    texts = [m["content"] for r in load_records(root / "shapes" / "train.jsonl") for m in r.messages]
    save_tiny_composed_pair(root / "teacher", root / "student", texts)
    return root


def save_text_pair(root: Path, n_train: int) -> Path:
    """Text-only shapes data plus a tiny Qwen2 teacher (hidden 32) and student (hidden 16) under ``root``."""
    generate_shapes(root / "shapes", n_train, 2, seed=0, text=True)
    save_tiny("qwen2", root / "teacher", hidden_size=32, num_layers=1, seed=1)
    save_tiny("qwen2", root / "student", hidden_size=16, num_layers=1, seed=2)
    return root
