"""Universal Logit Distillation (Boizard et al., 2024): compare sorted probabilities, not tokens.

Two models with different vocabularies have no token-by-token correspondence. ULD compares the
two next-token distributions as sorted probability vectors: with the ranks as the support and a
uniform ground cost, the Wasserstein-1 distance has the closed form
``sum_i |q_(i) - p_(i)|`` (``q_(i)``: the student's i-th largest probability, ``p_(i)`` the
teacher's; the shorter vector padded with zeros), and the loss is trained beside the student's
cross entropy, ``CE + lambda * ULD``.

Here both sides are known by their k most probable entries plus the rest (the teacher's top-k +
tail, the student's own top-k in each chunk): ``sum_{i<=k} |q_(i) - p_(i)| + |q_rest - p_tail|``,
the k + 1 rank buckets of the two distributions. By the triangle inequality it is a lower bound
of the full sum and equals it when k covers the teacher's vocabulary (its tail is then empty,
the zeros the paper pads with); the part it leaves out is how the two tails are spread over
their ranks. A rank the teacher has no
entry for (an empty slot, id < 0) is left out on the student's side too, so an unaligned token
(every slot empty) contributes exactly 0.

Why TAID's interpolation is not offered on top: in this space the interpolation of the sorted
vectors, ``(1 - t) * sort(q) + t * sort(p)``, is again sorted (the 1-D displacement interpolant),
and its distance to the student is exactly ``t * ULD``: TAID's target would only rescale the
loss, which the CE/ULD weighting already does (docs/CROSS-TOKENIZER.md). Pure tensor math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .signals import TopK

Tensor = torch.Tensor


@dataclass
class Ranks(TopK):
    """A teacher known by its sorted probabilities: ``logprobs [n, k]`` largest first, ``tail [n]``;
    ``ids`` are the teacher's own (another vocabulary) and only their sign is read (< 0: an empty
    slot). Only a ranked loss (``ULD``) reads it."""

    ranked: ClassVar[bool] = True

    @classmethod
    def of(cls, topk: TopK) -> "Ranks":
        return cls(topk.ids, topk.logprobs, topk.tail)

    def select(self, keep: Tensor) -> "Ranks":
        return Ranks.of(super().select(keep))

    def to(self, device=None, dtype=None) -> "Ranks":
        return Ranks.of(super().to(device, dtype))

    def check(self, vocab: int) -> None:
        if self.k >= vocab:
            raise ValueError(f"ULD's teacher has {self.k} ranks but the student's vocabulary only {vocab} entries; "
                             "use a smaller top-k (cross_tokenizer_top_k)")


def rank_ids(student_logits: Tensor, teacher_ids: Tensor) -> Tensor:
    """The student's own most probable ids, largest first, one per teacher slot ``[c, k]``; -1
    where the teacher's slot is empty (``teacher_ids < 0``) or the student has fewer entries."""
    k, vocab = teacher_ids.shape[-1], student_logits.shape[-1]
    top = student_logits.topk(min(k, vocab), dim=-1, sorted=True).indices
    if top.shape[-1] < k:
        top = torch.cat([top, top.new_full((top.shape[0], k - top.shape[-1]), -1)], dim=-1)
    return torch.where(teacher_ids >= 0, top, torch.full_like(top, -1))


def uld_per_token(student: Tensor, teacher: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """``sum_b |q_b - p_b|`` over rank buckets: ``student`` and ``teacher`` are ``[n, k(+1)]``
    bucket logits / log-probs, both ordered by rank (the rest / tail last); -inf is an empty bucket."""
    q = torch.softmax(student / temperature, dim=-1)
    p = torch.softmax(teacher / temperature, dim=-1)
    return (q - p).abs().sum(-1)
