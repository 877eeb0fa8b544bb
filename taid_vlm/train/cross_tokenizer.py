"""The teacher's signal on the student's response tokens when the two tokenizers differ.

``cross_tokenizer: span`` or ``uld`` (docs/CROSS-TOKENIZER.md). Per micro-batch the student's and
the teacher's response tokens are aligned (``models/cross_tokenizer.align``), the teacher's top-k
+ tail is taken at its aligned rows (a live teacher's chunk by chunk from its head, a cache's
as stored) and becomes a top-k signal over the STUDENT's response rows:

- ``span``: mapped onto student ids through the vocabulary map (mass on entries the student lacks
  joins the tail), so every loss of the zoo runs on it as on a cached teacher;
- ``uld``: kept as the teacher's sorted probabilities (``losses.uld.Ranks``); ULD compares them
  rank by rank with the student's own.

A student token without an aligned teacher token gets an empty row (every slot empty, all the
mass in the tail), which every loss scores 0 with no gradient: such tokens only meet the cross
entropy. ``aligned_fraction`` (aligned / all student response tokens) and, for span, the teacher
mass that found a student entry (``mapped_mass``) are logged per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data import Record
from ..losses.topk import TopK
from ..losses.uld import Ranks
from ..models import ModelAdapter
from ..models.cross_tokenizer import TextSide, VocabularyMap, align, map_topk, teacher_topk
from ..models.outputs import ResponseOutputs
from .config import ConfigError

MODES = ("off", "span", "uld")


class CrossTokenizer:
    """Aligns a batch's two sides and hands the loss the teacher's signal on the student's rows."""

    def __init__(self, mode: str, student: TextSide, teacher: TextSide, top_k: int, teacher_rows: int,
                 student_rows: int):
        if mode not in MODES[1:]:
            raise ValueError(f"cross_tokenizer must be one of {MODES[1:]} here, got {mode!r}")
        self.mode, self.student, self.teacher, self.top_k = mode, student, teacher, top_k
        self.student_rows = student_rows
        self.vocabulary = VocabularyMap.build(teacher, student, teacher_rows) if mode == "span" else None
        self._sums = torch.zeros(3, dtype=torch.float64)  # aligned tokens, student tokens, mapped mass

    @classmethod
    def for_run(cls, config: Any, student: ModelAdapter, teacher: ModelAdapter | None, cache: Any = None
                ) -> "CrossTokenizer | None":
        """The run's pairing, or None with ``cross_tokenizer: off``; ``cache``: a ``TeacherCache``
        (its teacher's side was saved with it) when no teacher model is loaded."""
        if config.cross_tokenizer == "off":
            return None
        student_side = TextSide.of(student, f"student={config.student}")
        student_rows = int(student.lm_head().weight.shape[0])
        if cache is not None:
            teacher_side, teacher_rows, top_k = cache.teacher_text(), int(cache.teacher["vocab_size"]), cache.top_k
            where = f"the teacher cache's top_k ({top_k})"
        else:
            teacher_side, teacher_rows = TextSide.of(teacher, f"teacher={config.teacher}"), teacher.lm_head().weight.shape[0]
            top_k, where = config.cross_tokenizer_top_k, f"cross_tokenizer_top_k={config.cross_tokenizer_top_k}"
        if top_k >= student_rows:
            raise ConfigError(f"{where} must be below the student's vocabulary ({student_rows} entries): the teacher's "
                              "mass the student's vocabulary lacks needs the tail bucket")
        return cls(config.cross_tokenizer, student_side, teacher_side, top_k, int(teacher_rows), student_rows)

    def teacher_outputs(self, student_out: ResponseOutputs, teacher_out: ResponseOutputs,
                        records: Sequence[Record]) -> ResponseOutputs:
        """The teacher's signal over the student's response rows, on the student's device."""
        alignment = align(self.student, self.teacher, records, student_out.token_ids, student_out.record_index,
                          teacher_out.token_ids, teacher_out.record_index)
        topk = teacher_topk(teacher_out, alignment.teacher_rows, self.top_k)
        mapped_mass = torch.zeros(())
        if self.vocabulary is not None:
            topk, mass = map_topk(topk, self.vocabulary.table)
            mapped_mass = mass.sum()
        self._sums += torch.tensor([alignment.num_aligned, alignment.num_student, float(mapped_mass)], dtype=torch.float64)
        device = student_out.token_ids.device
        rows = _on_student_rows(topk, alignment.student_rows, alignment.num_student, device)
        signal = rows if self.mode == "span" else Ranks.of(rows)
        return ResponseOutputs(student_out.token_ids, student_out.record_index, topk=signal,
                               cached_vocab_size=self.student_rows)

    def step_metrics(self, total: Any) -> dict[str, float]:
        """The step's columns (``total``: the loop's sum over ranks, e.g. ``Distributed.sum``); resets."""
        aligned, tokens, mass = total(self._sums).tolist()
        self._sums = torch.zeros(3, dtype=torch.float64)
        row = {"aligned_fraction": aligned / tokens if tokens else 0.0}
        if self.vocabulary is not None:
            row["mapped_mass"] = mass / aligned if aligned else 0.0
        return row


def _on_student_rows(topk: TopK, student_rows: torch.Tensor, num_student: int, device: torch.device) -> TopK:
    """``topk`` (one row per aligned pair) spread over all student rows; the others empty."""
    k = topk.ids.shape[-1]
    ids = torch.full((num_student, k), -1, dtype=torch.long, device=device)
    logprobs = torch.full((num_student, k), -torch.inf, dtype=torch.float32, device=device)
    tail = torch.zeros(num_student, dtype=torch.float32, device=device)
    rows = student_rows.to(device)
    ids[rows] = topk.ids.to(device, torch.long)
    logprobs[rows] = topk.logprobs.to(device, torch.float32)
    tail[rows] = topk.tail.to(device, torch.float32)
    return TopK(ids, logprobs, tail)
