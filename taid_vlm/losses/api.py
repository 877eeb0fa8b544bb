"""``divergence(loss, student, teacher, ...)``: the one door to every loss on every path.

``loss`` is a loss object (``zoo.py``, or any ``Loss`` subclass) or a registered name with its
parameters as keywords (``divergence("gjsd", s, t, beta=0.3)``). The path follows from what is
given:

================================  ============================  ===============================
student                           teacher                       path
================================  ============================  ===============================
logits ``[..., V]`` (or Logits)   logits / ``Logits`` / ``Head``  plain: full logits
logits                            ``TopK`` (a ``BucketSignal``)   plain: on the teacher's buckets
``Head`` (hidden + LM head)       ``Logits`` / ``Head``           chunked, full-vocabulary step
``Head``                          ``TopK``                        chunked, bucket step
================================  ============================  ===============================

``EngineOptions`` says how (chunk budget or size, compile, closed form, the CE weight, the math
dtype; ``chunked=False`` sends a ``Head`` student down the plain path). Every option means the
same on every path and device. TAID's t has no default on purpose: it comes from TAIDSchedule,
and a silent constant would turn TAID into a fixed-interpolation KD without anyone noticing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Loss
from .chunked import FullVocabStep, Plan, chunk_size_for, kl_kernel, require_2d, run
from .common import reduce_tokens, upcast
from .divergences import cross_entropy
from .options import EngineOptions
from .registry import build_loss
from .signals import Head, Logits, TeacherSignal, as_signal
from .topk import BucketStep, bucket_divergence
from .vocab import shared_vocab_size

Tensor = torch.Tensor
DEFAULT_OPTIONS = EngineOptions()


class LossTerms(NamedTuple):
    """``return_terms=True``: the loss and its two terms (detached), each normalised like the loss."""

    total: Tensor
    kd: Tensor
    ce: Tensor


def divergence(
    loss: str | Loss,
    student: Tensor | Logits | Head,
    teacher: Tensor | TeacherSignal | None = None,
    mask: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    num_tokens: float | Tensor | None = None,
    temperature: float | Tensor = 1.0,
    options: EngineOptions = DEFAULT_OPTIONS,
    return_terms: bool = False,
    **params: float,
) -> Tensor | LossTerms:
    """Mean loss over the masked tokens (math in fp32 or wider); see the module's table for paths.

    ``teacher`` never receives gradients; ``temperature`` may be a tensor that requires grad
    (CTKD's learned temperature): its gradient flows on every path. ``labels`` are the target
    token ids (``dkd``, ``sft`` and ``options.ce_weight`` need them). ``num_tokens`` is the
    denominator (the response tokens of the whole optimizer step); default: the masked tokens.
    Only masked rows are computed, so padding and prompt positions cost nothing and any garbage
    in them cannot leak NaN into the result.
    """
    loss = build_loss(loss, **params)
    teacher = as_signal(teacher) if loss.needs_teacher else None
    name = loss.label()
    if loss.needs_teacher and teacher is None:
        raise ValueError(f"loss {name!r} needs the teacher: its logits, a Head (hidden states + LM head) or TopK")
    if loss.needs_teacher and loss.ranked != getattr(teacher, "ranked", False):
        raise ValueError(f"loss {name!r} compares sorted probabilities: give the teacher as losses.uld.Ranks"
                         if loss.ranked else f"a teacher given by its ranks (losses.uld.Ranks) needs a ranked loss "
                         f"(uld), not {name!r}")
    if options.ce_weight and not loss.needs_teacher:
        raise ValueError(f"ce_weight mixes cross entropy into a distillation loss; loss {name!r} is the student's own loss already")
    if isinstance(student, Logits):
        student = student.logits
    if isinstance(student, Head) and options.chunked:
        terms = _chunked(loss, student, teacher, mask, labels, num_tokens, temperature, options)
    else:
        logits = student.full_logits() if isinstance(student, Head) else student
        terms = _plain(loss, logits, teacher, mask, labels, num_tokens, temperature, options)
    return terms if return_terms else terms.total


def _plain(loss: Loss, student_logits: Tensor, teacher: TeacherSignal | None, mask: Tensor | None,
           labels: Tensor | None, num_tokens, temperature, options: EngineOptions) -> LossTerms:
    name = loss.label()
    lead = student_logits.shape[:-1]
    wants_labels = loss.needs_labels or bool(options.ce_weight)
    if wants_labels and labels is None:
        raise ValueError(f"loss {name!r} needs labels= (the target token ids, shape {tuple(lead)})")
    if isinstance(teacher, Logits) and teacher.logits.shape[:-1] != lead:
        raise ValueError(f"teacher logits {tuple(teacher.logits.shape)} and student logits {tuple(student_logits.shape)} "
                         "differ before the vocabulary axis")
    if teacher is not None and not isinstance(teacher, Logits) and teacher.rows != lead.numel():
        raise ValueError(f"teacher has {teacher.rows} tokens but the student has {lead.numel()}: outputs are not aligned")
    if mask is None:
        mask = torch.ones(lead, dtype=torch.bool, device=student_logits.device)
    if mask.shape != lead:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the logits' leading shape {tuple(lead)}")
    selected = mask.reshape(-1).bool()
    student = upcast(student_logits.reshape(-1, student_logits.shape[-1])[selected], options.dtype)
    chosen = labels.reshape(-1)[selected].to(student.device) if wants_labels else None
    kd_labels = chosen if loss.needs_labels else None
    if teacher is None:
        per_token = loss.per_token(student, None, temperature=temperature, labels=kd_labels)
    elif teacher.kind == "buckets":
        teacher.check(student.shape[-1])
        per_token = bucket_divergence(loss, student, teacher.select(selected.to(teacher.device)), kd_labels,
                                      temperature)
    else:
        target = upcast(teacher.select(selected.to(teacher.device)).full_logits().detach(), options.dtype)
        vocab = shared_vocab_size(student.shape[-1], target.shape[-1])
        per_token = loss.per_token(student[:, :vocab], target[:, :vocab], temperature=temperature, labels=kd_labels)
    n = student.shape[0]
    kd = reduce_tokens(per_token, num_tokens, n)
    if not options.ce_weight:
        return LossTerms(kd, kd.detach(), torch.zeros_like(kd.detach()))
    ce = reduce_tokens(cross_entropy(student, None, chosen), num_tokens, n)
    total = (1 - options.ce_weight) * kd + options.ce_weight * ce
    return LossTerms(total, kd.detach(), ce.detach())


def _chunked(loss: Loss, student: Head, teacher: TeacherSignal | None, mask: Tensor | None, labels: Tensor | None,
             num_tokens, temperature, options: EngineOptions) -> LossTerms:
    name = loss.label()
    for tensor, what in ((student.hidden, "student hidden states"), (student.weight, "student head weight")):
        require_2d(tensor, what)
    if isinstance(teacher, Head):
        require_2d(teacher.hidden, "teacher hidden states")
        require_2d(teacher.weight, "teacher head weight")
    elif isinstance(teacher, Logits):
        require_2d(teacher.logits, "teacher logits")
    n = student.rows
    ce_weight = float(options.ce_weight)
    if (loss.needs_labels or ce_weight) and labels is None:
        raise ValueError(f"loss {name!r} needs labels= (the target token ids, shape [{n}])")
    if teacher is not None and teacher.rows != n:
        raise ValueError(f"teacher has {teacher.rows} tokens but the student has {n}: outputs are not aligned")
    device = student.hidden.device
    if mask is None:
        mask = torch.ones(n, dtype=torch.bool, device=device)
    if mask.shape != (n,):
        raise ValueError(f"mask shape {tuple(mask.shape)} must be [{n}] (flatten it like the hidden states)")
    selected = mask.bool()
    if not bool(selected.all()):
        student = student.select(selected)
        teacher = teacher.select(selected.to(teacher.device)) if teacher is not None else None
        labels = labels.reshape(-1)[selected.to(labels.device)] if labels is not None else None
    labels = labels.reshape(-1).to(device) if labels is not None else None
    if teacher is not None:
        teacher = teacher.detach().to(device)

    head_rows = student.vocab
    temperature_tensor = temperature if isinstance(temperature, Tensor) else None
    interpolation = loss.interpolation() if temperature_tensor is None and options.closed_form else None
    kd_labels = labels if loss.needs_labels else None
    kernel = None
    if interpolation is not None and teacher is not None:  # the closed form's kernel, for this device and dtype
        teacher_dtype = torch.float32 if teacher.kind == "buckets" else teacher.dtype  # buckets: fp32 (BucketStep)
        math = torch.promote_types(torch.promote_types(student.weight.dtype, options.dtype), teacher_dtype)
        kernel = kl_kernel(options, device, math)
    if teacher is None:  # the student's own loss (sft) on its logits: autograd per chunk
        step = FullVocabStep(None, loss, kd_vocab=head_rows, labels=kd_labels, interpolation=None,
                             kernel=kernel)
    elif teacher.kind == "buckets":
        teacher.check(head_rows)
        step = BucketStep(teacher, loss, vocab=head_rows, labels=kd_labels, interpolation=interpolation,
                          kernel=kernel)
    else:
        kd_vocab = shared_vocab_size(head_rows, teacher.vocab)
        if ce_weight and kd_vocab != head_rows:
            interpolation = None  # the fused CE spans the whole head, the KD the shared columns: autograd per chunk
        step = FullVocabStep(teacher, loss, kd_vocab=kd_vocab, labels=kd_labels, interpolation=interpolation,
                             kernel=kernel)
    vocab = head_rows if ce_weight else step.kd_vocab  # padding rows of the head take no part (a zero gradient)
    low_precision = student.weight.dtype.itemsize < 4
    plan = Plan(
        step=step,
        temperature=None if temperature_tensor is not None else temperature,
        vocab=vocab,
        chunk_size=chunk_size_for(step, vocab, options, device=device, low_precision=low_precision,
                                  softcap=student.softcap is not None),
        num_tokens=num_tokens,
        ce_weight=ce_weight,
        ce_labels=labels if ce_weight else None,
        softcap=student.softcap,
        dtype=torch.promote_types(torch.promote_types(student.weight.dtype, options.dtype), step.dtype),
    )
    total = run(student.hidden, student.weight, student.bias, temperature_tensor, plan)
    kd, ce = plan.terms
    return LossTerms(total, kd.detach(), ce.detach())


__all__ = ["divergence", "EngineOptions", "LossTerms"]
