"""Divergences against a teacher known only by its top-k tokens plus one tail bucket.

An offline teacher cache keeps, for each response token, the teacher's k most probable token
ids, their log-probabilities and the log of the probability mass left over (the tail). The
teacher distribution is then exact on k + 1 buckets: the k tokens, and "any other token".

Both sides are compared on those same k + 1 buckets: the student's logits are gathered at the
k ids and the rest of its vocabulary is folded into one bucket with ``logsumexp``. Every loss
of the zoo then runs unchanged on ``[n, k + 1]`` bucket logits. With k = V there is no tail
and the result equals the full-vocabulary loss (up to float summation order). With k < V:
- KL-type losses (fkl, rkl, gjsd, skew_*, akl, ctkd) see the coarse-grained distributions; by
  the data-processing inequality each f-divergence can only be SMALLER than on the full
  vocabulary, and the difference is what happens inside the tail;
- tvd is exact up to the tail: the bucketed value differs from the true one by at most the
  smaller of the two tail masses (``|sum_tail (p - q)| <= TV <= sum_tail |p - q|``);
- taid forms p_t over the buckets: ``softmax((1 - t) * z_s_b + t * z_T_b)`` where ``z_s_b`` are
  the student's bucket logits (k gathered logits + logsumexp of the rest) and ``z_T_b`` the
  teacher's bucket log-probs (k cached log-probs + log tail mass); the tail bucket of p_t is
  therefore the geometric interpolation of the two tail MASSES, not the sum of interpolated
  tail tokens;
- dkd's target class is the label's bucket: the label's own entry when it is among the top-k,
  the tail bucket otherwise;
- a temperature divides the bucket logits, i.e. the tail is tempered as if it were one token
  (exact at temperature 1, the TAID paper's setting).

A slot whose id is negative is empty: it is no bucket on either side (the student's logit there
is -inf, nothing is taken out of its rest), so a teacher may carry fewer than k entries in a row
(a cross-tokenizer mapping, docs/CROSS-TOKENIZER.md); a row of empty slots only (all its mass
in the tail) scores 0 with a zero gradient under every loss. Empty slots need a tail (k < V).

The teacher is a ``BucketSignal`` (``signals.TopK``: a cache, a server's top-k logprobs); on
the plain path ``bucket_divergence`` maps full student logits onto its buckets, in the chunked
engine ``BucketStep`` is the per-chunk step. Pure tensor math: no model code, no I/O.
"""

from __future__ import annotations

import torch

from .base import Loss
from .chunked import ROWS_BUCKETS, ChunkStep, KLKernel, autograd_step
from .common import upcast
from .signals import BucketSignal, TopK
from .uld import rank_ids

Tensor = torch.Tensor


def topk_of_logits(logits: Tensor, k: int) -> TopK:
    """The k most probable tokens of each row, their log-probs, and the log of the rest's mass.

    The tail is a ``logsumexp`` over the remaining log-probs, not ``log(1 - sum top-k)``: the
    subtraction would lose all precision exactly when the top-k hold almost all the mass.
    """
    logprobs = torch.log_softmax(upcast(logits), dim=-1)
    k = min(int(k), logprobs.shape[-1])
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    top, ids = logprobs.topk(k, dim=-1, sorted=True)
    if k == logprobs.shape[-1]:
        tail = torch.full(top.shape[:-1], -torch.inf, dtype=top.dtype, device=top.device)
    else:
        tail = logprobs.scatter(-1, ids, -torch.inf).logsumexp(-1)
    return TopK(ids, top, tail)


def _slots(ids: Tensor) -> tuple[Tensor, Tensor | None]:
    """Ids safe to gather and scatter at (an empty slot repeats a valid id of its row, which
    excludes nothing more from the rest), and the empty slots (None when there are none)."""
    empty = ids < 0
    if not bool(empty.any()):
        return ids, None
    filler = ids.amax(-1, keepdim=True).clamp_min(0).expand_as(ids)  # a row of empty slots only: any id will do
    return torch.where(empty, filler, ids), empty


def student_buckets(logits: Tensor, ids: Tensor) -> Tensor:
    """The student's logits on the teacher's buckets: k gathered logits + logsumexp of the rest.

    Differentiable. With k = V the tail is empty and dropped (its logsumexp would be -inf, whose
    gradient is NaN). Empty slots (negative ids) get -inf.
    """
    safe, empty = _slots(ids)
    gathered = logits.gather(-1, safe)
    if empty is not None:
        gathered = gathered.masked_fill(empty, -torch.inf)
    if ids.shape[-1] >= logits.shape[-1]:
        return gathered
    rest = logits.scatter(-1, safe, -torch.inf).logsumexp(-1, keepdim=True)
    return torch.cat([gathered, rest], dim=-1)


def split_student(logits: Tensor, ids: Tensor) -> tuple[Tensor, Tensor | None]:
    """``student_buckets`` without autograd, plus the log-softmax over the rest of the
    vocabulary (-inf on the top-k ids; None when k = V), which ``rest_gradient`` reuses: the
    chunked engine then touches the ``[c, V]`` logits twice instead of four times."""
    safe, empty = _slots(ids)
    gathered = logits.gather(-1, safe)
    if empty is not None:
        gathered.masked_fill_(empty, -torch.inf)
    if ids.shape[-1] >= logits.shape[-1]:
        return gathered, None
    rest = logits.scatter(-1, safe, -torch.inf)
    lse = rest.logsumexp(-1, keepdim=True)
    return torch.cat([gathered, lse], dim=-1), rest.sub_(lse)


def rest_gradient(grad_buckets: Tensor, rest_logprobs: Tensor | None, ids: Tensor, vocab: int) -> Tensor:
    """Chain rule from the bucket logits back to the ``[n, V]`` logits, without autograd.

    d bucket_i / d z_j is 1 for the gathered entry i = position of j, and for the tail bucket it
    is the softmax over the rest (``exp(rest_logprobs)``, 0 on the top-k ids). Consumes
    ``rest_logprobs`` in place. An empty slot's bucket is a constant (-inf): it passes nothing on.
    """
    k = ids.shape[-1]
    safe, empty = _slots(ids)
    if rest_logprobs is None:
        out = torch.zeros((ids.shape[0], vocab), dtype=grad_buckets.dtype, device=grad_buckets.device)
    else:
        out = rest_logprobs.exp_().mul_(grad_buckets[:, k:k + 1])
    slots = grad_buckets[:, :k] if empty is None else grad_buckets[:, :k].masked_fill(empty, 0.0)
    return out.scatter_add_(-1, safe, slots)


def bucket_labels(labels: Tensor, ids: Tensor) -> Tensor:
    """Each label's bucket: its position among the top-k ids, else k (the tail); negatives stay."""
    hit = ids == labels.clamp_min(0).unsqueeze(-1)
    position = torch.where(hit.any(-1), hit.float().argmax(-1), torch.full_like(labels, ids.shape[-1]))
    return torch.where(labels >= 0, position, labels)


def bucket_divergence(loss: Loss, student: Tensor, teacher: BucketSignal, labels: Tensor | None,
                      temperature: float | Tensor) -> Tensor:
    """Per-token loss of fp32 student logits ``[n, V]`` against the teacher's buckets (plain path).
    A ranked loss (ULD) compares the student's own top-k with the teacher's, rank by rank."""
    ids, teacher_buckets = teacher.buckets(0, student.shape[0], student.shape[-1])
    ids = ids.to(student.device)
    if loss.ranked:
        ids = rank_ids(student.detach(), ids)
    live = _live_rows(ids)
    if live is not None:  # rows of empty slots only score 0: the loss sees the others
        out = torch.zeros(student.shape[0], dtype=student.dtype, device=student.device)
        chosen = labels[live] if labels is not None else None
        kept = _bucket_rows(loss, student[live], ids[live], teacher_buckets[live.to(teacher_buckets.device)], chosen,
                            temperature)
        return out.masked_scatter(live, kept)
    return _bucket_rows(loss, student, ids, teacher_buckets, labels, temperature)


def _bucket_rows(loss: Loss, student: Tensor, ids: Tensor, teacher_buckets: Tensor, labels: Tensor | None,
                 temperature: float | Tensor) -> Tensor:
    bucketed = bucket_labels(labels, ids) if labels is not None else None
    return loss.per_token(student_buckets(student, ids), teacher_buckets.to(student.device), temperature=temperature,
                          labels=bucketed)


def _live_rows(ids: Tensor) -> Tensor | None:
    """Rows with at least one bucket besides the tail, or None when every row has one."""
    live = (ids >= 0).any(-1)
    return None if bool(live.all()) else live


class BucketStep(ChunkStep):
    """The chunked engine's step for a top-k + tail teacher: the loss and its gradient on the
    ``[c, k + 1]`` buckets (closed form for taid/fkl, autograd for the rest: a tiny graph, never
    the ``[c, V]`` logits), chained back to the chunk's logits by ``rest_gradient``."""

    rows_per_token = ROWS_BUCKETS

    def __init__(self, teacher: BucketSignal, loss: Loss, *, vocab: int, labels: Tensor | None,
                 interpolation: float | None, kernel: KLKernel):
        self.teacher, self.loss, self.kd_vocab, self.labels = teacher, loss, vocab, labels
        self.interpolation, self.kernel = interpolation, kernel
        self.dtype = torch.float32

    def __call__(self, logits, start, end, temperature, want_t, need_grad):
        ids, teacher_buckets = self.teacher.buckets(start, end, self.kd_vocab)
        if self.loss.ranked:  # ULD: the student's own top-k, largest first, against the teacher's ranks
            ids = rank_ids(logits, ids)
        student, rest = split_student(logits, ids)
        labels = self.labels[start:end] if self.labels is not None else None
        live = _live_rows(ids)
        if live is None:
            kd, grad_buckets, grad_t = self._buckets_step(student, teacher_buckets, ids, labels, temperature, want_t,
                                                          need_grad)
        else:  # rows of empty slots only (all the teacher's mass in the tail) score 0 with no gradient
            chosen = labels[live] if labels is not None else None
            kd, live_grad, grad_t = self._buckets_step(student[live], teacher_buckets[live], ids[live], chosen,
                                                       temperature, want_t, need_grad)
            grad_buckets = None
            if live_grad is not None:
                grad_buckets = torch.zeros_like(student)
                grad_buckets[live] = live_grad
        if grad_buckets is None:
            return kd, None, grad_t
        return kd, rest_gradient(grad_buckets, rest, ids, self.kd_vocab), grad_t

    def _buckets_step(self, student, teacher_buckets, ids, labels, temperature, want_t, need_grad):
        if self.interpolation is not None:
            per_token = self.kernel(student, teacher_buckets.to(student.dtype), self.interpolation, temperature)
            return per_token.sum(), student, None
        bucketed = bucket_labels(labels, ids) if labels is not None else None
        return autograd_step(self.loss, student, teacher_buckets, bucketed, temperature, want_t, need_grad)
