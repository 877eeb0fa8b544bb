"""Budgets of the embedded demo: ``quick`` (CI smoke), ``default`` (the demo, aimed at about ten
minutes on 2 quiet CPU cores), ``same-data`` (the default before it adopted the transfer regime)
and ``full`` (a bigger budget).

How they were sized is in docs/DEMO-SIZING.md; a run writes what it measured, with the
machine and the command, to ``OUT/results.json``. ``full`` scales the default's data and steps for users with
more time and has not been tuned. The rule they follow: the teacher must clearly beat a student
trained without it, so the teacher is several times larger and gets enough steps at a learning
rate suited to small models, while the students share one small size and one short budget.

The students see only a small transfer set (``transfer_records``: the first scenes of the
teacher's training set) - the regime where a teacher's knowledge is worth distilling. When the
students train on the teacher's whole set (``same-data``) they learn nearly as much from the
labels as from the teacher, and no loss can show much (docs/results/quality/README.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..losses import TAID

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
    t_start: float = TAID.settings["t_start"].default  # TAID's own default (losses/schedule.py)
    # students distil on the first N training scenes only (None: the teacher's whole set)
    transfer_records: int | None = None
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
    eval_questions=60, eval_captions=12, eval_batch_size=32, caption_backend="python", transfer_records=48,
)

# The teacher (64 image tokens) and the student (16 image tokens) are the pair the sizing runs
# picked. ``same-data``: the students train on the teacher's 4,000 scenes for 150 steps (the demo
# until the transfer-regime benchmark showed the teacher's value more clearly the other way).
SAME_DATA = DemoPreset(
    name="same-data",
    n_train=4000, n_test=150, image_size=64, qa_turns=3, vocab_size=1024,
    teacher=_vlm((32, 64, 128, 128), 64, 192, 4), student=_vlm((16, 32, 64, 64), 16, 96, 2),
    text_teacher=text_config(256, 4), text_student=text_config(96, 2),
    teacher_budget=TrainBudget(steps=400, lr=1e-3, batch_size=32, warmup_steps=20),
    student_budget=TrainBudget(steps=150, lr=2e-3, batch_size=32, warmup_steps=7),
    eval_questions=1500, eval_captions=100, eval_batch_size=64,
)

# The demo: the same teacher; the students see 300 of its 4,000 scenes for 200 steps of 16
# (the transfer regime of scripts/bench_quality.py, sized there).
DEFAULT = SAME_DATA.with_overrides(
    name="default",
    transfer_records=300,
    student_budget=TrainBudget(steps=200, lr=2e-3, batch_size=16, warmup_steps=10),
)

FULL = DEFAULT.with_overrides(
    name="full",
    n_train=8000, n_test=300, transfer_records=600,
    teacher_budget=TrainBudget(steps=1200, lr=1e-3, batch_size=32, warmup_steps=60),
    student_budget=TrainBudget(steps=400, lr=2e-3, batch_size=16, warmup_steps=20),
    eval_questions=None, eval_captions=300,
)

PRESETS = {p.name: p for p in (QUICK, DEFAULT, SAME_DATA, FULL)}
