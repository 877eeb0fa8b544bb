"""Budgets of the embedded demo: ``quick`` (CI smoke), ``default`` (the demo, aimed at about ten
minutes on 2 quiet CPU cores) and ``full`` (a bigger budget; scripts/bench_quality.py runs the
default one).

How they were sized is in docs/DEMO-SIZING.md; a run writes what it measured, with the
machine and the command, to ``OUT/results.json``. ``full`` scales the default's data and steps for users with
more time and has not been tuned. The rule they follow: the teacher must clearly beat a student
trained without it, so the teacher is several times larger and gets enough steps at a learning
rate suited to small models, while the students share one small size and one short budget,
which is where a teacher's soft targets can help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

_LM = {"model_type": "llama", "tie_word_embeddings": True, "max_position_embeddings": 1024}


def _vlm(channels: tuple[int, ...], image_tokens: int, hidden: int, layers: int) -> dict[str, Any]:
    """A composed VLM with a small ResNet encoder (chosen over a ViT during sizing for models
    trained from scratch on a few thousand images; docs/DEMO-SIZING.md).
    ``output_stride=8`` keeps a spatial grid the projector can pool into ``image_tokens``.
    """
    return {
        "vision": "timm:resnet10t",
        "vision_kwargs": {"channels": list(channels), "output_stride": 8},
        "num_image_tokens": image_tokens,
        "text_config": text_config(hidden, layers),
    }


def text_config(hidden: int, layers: int) -> dict[str, Any]:
    """A small Llama-style LM config (also the capacity-gap ladder's LM, scripts/bench_quality.py)."""
    heads = 4 if hidden >= 96 else 2
    return {**_LM, "hidden_size": hidden, "intermediate_size": hidden * 8 // 3, "num_hidden_layers": layers,
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
    teacher=_vlm((16, 32, 64, 64), 16, 96, 2), student=_vlm((8, 16, 32, 32), 4, 48, 1),
    text_teacher=text_config(96, 2), text_student=text_config(48, 1),
    teacher_budget=TrainBudget(steps=30, lr=3e-3, batch_size=8, warmup_steps=3),
    student_budget=TrainBudget(steps=12, lr=3e-3, batch_size=8, warmup_steps=2),
    eval_questions=60, eval_captions=12, eval_batch_size=32, caption_backend="python",
)

# The teacher (64 image tokens) and the student (16 image tokens) are the pair the sizing runs
# picked; the students get 150 steps, short enough for a teacher's soft targets to matter.
DEFAULT = DemoPreset(
    name="default",
    n_train=4000, n_test=150, image_size=64, qa_turns=3, vocab_size=1024,
    teacher=_vlm((32, 64, 128, 128), 64, 192, 4), student=_vlm((16, 32, 64, 64), 16, 96, 2),
    text_teacher=text_config(256, 4), text_student=text_config(96, 2),
    teacher_budget=TrainBudget(steps=400, lr=1e-3, batch_size=32, warmup_steps=20),
    student_budget=TrainBudget(steps=150, lr=2e-3, batch_size=32, warmup_steps=7),
    eval_questions=1500, eval_captions=100, eval_batch_size=64,
)

FULL = DEFAULT.with_overrides(
    name="full",
    n_train=8000, n_test=300,
    teacher_budget=TrainBudget(steps=1200, lr=1e-3, batch_size=32, warmup_steps=60),
    student_budget=TrainBudget(steps=400, lr=2e-3, batch_size=32, warmup_steps=20),
    eval_questions=None, eval_captions=300,
)

PRESETS = {p.name: p for p in (QUICK, DEFAULT, FULL)}
