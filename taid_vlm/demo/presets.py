"""Budgets of the embedded demo: ``quick`` (CI smoke), ``default`` (<= 10 min on 2 CPU cores)
and ``full`` (the quality benchmark's budget).

Every number here was measured on a 2-core CPU machine (see docs/results/ and the README);
the rule they follow comes from a first toy trial (TOY-SCALE.md): the teacher must clearly
beat a student trained without it, so the teacher is several times larger and gets enough
steps at a learning rate suited to small models, while the students share one small size and
one short budget, which is where a teacher's soft targets can help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

_VIT = "timm:vit_tiny_patch16_224"
_LM = {"model_type": "llama", "tie_word_embeddings": True, "max_position_embeddings": 1024}


def _vlm(vit_depth: int, vit_width: int, heads: int, hidden: int, layers: int, image_tokens: int) -> dict[str, Any]:
    return {
        "vision": _VIT,
        "vision_kwargs": {"patch_size": 8, "depth": vit_depth, "embed_dim": vit_width, "num_heads": heads},
        "num_image_tokens": image_tokens,
        "text_config": _text(hidden, layers),
    }


def _text(hidden: int, layers: int) -> dict[str, Any]:
    heads = max(2, hidden // 64)
    return {**_LM, "hidden_size": hidden, "intermediate_size": hidden * 2, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2)}


@dataclass(frozen=True)
class TrainBudget:
    steps: int
    lr: float
    batch_size: int
    warmup_steps: int = 0


@dataclass(frozen=True)
class DemoPreset:
    name: str
    # data
    n_train: int
    n_test: int
    image_size: int
    qa_turns: int
    vocab_size: int
    # models: composed-VLM spec dicts (image demo) and LM config dicts (text demo)
    teacher: dict[str, Any]
    student: dict[str, Any]
    text_teacher: dict[str, Any]
    text_student: dict[str, Any]
    # budgets
    teacher_budget: TrainBudget
    student_budget: TrainBudget
    t_start: float = 0.4
    losses: tuple[str, ...] = ("sft", "fkl", "taid")
    # evaluation
    eval_questions: int | None = None  # None: every test question
    eval_captions: int | None = None
    eval_batch_size: int = 32
    caption_backend: str = "auto"  # "python" skips Java's METEOR start-up (smoke runs only)
    extra: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, **changes: Any) -> "DemoPreset":
        return dataclasses.replace(self, **changes)

    def key(self, *parts: str) -> dict[str, Any]:
        """The fields that decide a cached artefact (data, teacher) - a change invalidates it."""
        return {p: _jsonable(getattr(self, p)) for p in parts}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


QUICK = DemoPreset(
    name="quick",
    n_train=96, n_test=12, image_size=32, qa_turns=2, vocab_size=384,
    teacher=_vlm(2, 64, 2, 96, 2, 16), student=_vlm(1, 32, 2, 48, 1, 4),
    text_teacher=_text(96, 2), text_student=_text(48, 1),
    teacher_budget=TrainBudget(steps=30, lr=3e-3, batch_size=8, warmup_steps=3),
    student_budget=TrainBudget(steps=12, lr=3e-3, batch_size=8, warmup_steps=2),
    eval_questions=60, eval_captions=12, eval_batch_size=32, caption_backend="python",
)

DEFAULT = DemoPreset(
    name="default",
    n_train=2000, n_test=200, image_size=32, qa_turns=3, vocab_size=512,
    teacher=_vlm(4, 128, 4, 256, 4, 16), student=_vlm(2, 64, 2, 96, 2, 16),
    text_teacher=_text(256, 4), text_student=_text(96, 2),
    teacher_budget=TrainBudget(steps=600, lr=2e-3, batch_size=32, warmup_steps=30),
    student_budget=TrainBudget(steps=200, lr=2e-3, batch_size=32, warmup_steps=10),
    eval_questions=1000, eval_captions=100, eval_batch_size=64,
)

FULL = DemoPreset(
    name="full",
    n_train=8000, n_test=600, image_size=32, qa_turns=3, vocab_size=512,
    teacher=_vlm(4, 128, 4, 256, 4, 16), student=_vlm(2, 64, 2, 96, 2, 16),
    text_teacher=_text(256, 4), text_student=_text(96, 2),
    teacher_budget=TrainBudget(steps=3000, lr=2e-3, batch_size=32, warmup_steps=100),
    student_budget=TrainBudget(steps=800, lr=2e-3, batch_size=32, warmup_steps=40),
    eval_questions=None, eval_captions=300, eval_batch_size=64,
)

PRESETS = {p.name: p for p in (QUICK, DEFAULT, FULL)}
