"""The chunked engine for a cached (top-k + tail) teacher: never an ``[N, V]`` tensor.

Same idea as ``chunked.py``: walk the response tokens in chunks; per chunk compute the
student's ``[c, V]`` logits from its hidden states and head, map them onto the teacher's k + 1
buckets (``topk.student_buckets``), take the divergence and its gradient on the small
``[c, k + 1]`` bucket tensor, chain that gradient back to the ``[c, V]`` logits in closed form
(``topk.rest_gradient``), fold it into the hidden-state and head gradients, and drop the chunk.
Backward only hands over the stored gradients. The teacher side costs ``[c, k + 1]`` per chunk.
With ``ce_weight`` the student's cross entropy on the full vocabulary rides along: its gradient
is formed in the chunk's logits buffer once the buckets are taken, and mixed with the KD one
before the single fold through the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .api import reduce_tokens, upcast
from .base import Loss
from .chunked import auto_chunk_size, cross_entropy_into
from .divergences import fused_interpolated_kl
from .registry import build_loss
from .topk import TopK, bucket_labels, check_ids, rest_gradient, split_student, teacher_buckets

Tensor = torch.Tensor


@dataclass
class _Spec:
    loss: Loss
    temperature: float | None  # a plain temperature; a learned one is the Function's input
    labels: Tensor | None
    topk: TopK
    vocab: int
    chunk_size: int
    num_tokens: float | Tensor | None
    interpolation: float | None  # t of the closed-form KL(p_t || q), or None: autograd per chunk
    ce_weight: float = 0.0  # weight of the fused cross entropy; 0: none
    ce_labels: Tensor | None = None  # token ids (the full vocabulary) for the fused cross entropy
    terms: tuple[Tensor, Tensor] | None = None  # (kd, ce) reduced like the loss, set by forward


class _ChunkedTopKDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: Tensor | None, spec: _Spec):
        want_h, want_w, want_b, want_t = ctx.needs_input_grad[:4]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if want_b else None
        grad_t = torch.zeros((), dtype=acc, device=hidden.device) if want_t else None
        total = torch.zeros(2, dtype=acc, device=hidden.device)  # sums of the kd and ce terms
        n = hidden.shape[0]
        for start in range(0, n, spec.chunk_size):
            end = min(start + spec.chunk_size, n)
            h_chunk = hidden[start:end]
            rows = spec.topk.rows(start, end)
            with torch.no_grad():
                z = h_chunk @ weight.t()
                if bias is not None:
                    z = z + bias
                z = upcast(z)
                student_b, rest = split_student(z, rows.ids)
                if spec.ce_weight:  # the logits become the CE gradient, softmax(z) - onehot
                    total[1] += cross_entropy_into(z, z, spec.ce_labels[start:end])
                else:
                    del z
                teacher_b = teacher_buckets(rows, spec.vocab)
            if spec.interpolation is not None:
                per_token, grad_b_logits = fused_interpolated_kl(student_b, teacher_b, spec.interpolation, spec.temperature)
                total[0] += per_token.sum()
            else:
                with torch.enable_grad():
                    leaf = student_b.requires_grad_(True)
                    t_leaf = temperature.detach().requires_grad_(want_t) if temperature is not None else spec.temperature
                    labels = spec.labels[start:end] if spec.labels is not None else None
                    chunk_loss = spec.loss.per_token(leaf, teacher_b, temperature=t_leaf, labels=labels).sum()
                    inputs = [leaf] + ([t_leaf] if want_t else [])
                    grads = torch.autograd.grad(chunk_loss, inputs)
                total[0] += chunk_loss.detach()
                grad_b_logits = grads[0]
                if want_t:
                    grad_t += grads[1]
            grad_logits = rest_gradient(grad_b_logits, rest, rows.ids, spec.vocab)
            del rest, student_b, teacher_b, grad_b_logits
            if spec.ce_weight:
                grad_logits.mul_(1 - spec.ce_weight).add_(z, alpha=spec.ce_weight)
                del z
            if want_h:
                grad_h[start:end] = grad_logits.to(h_chunk.dtype) @ weight
            if want_w:
                grad_w.addmm_(grad_logits.t(), h_chunk.to(acc))
            if want_b:
                grad_b += grad_logits.sum(0)
            del grad_logits
        kd, ce = (reduce_tokens(term, spec.num_tokens, n) for term in total)
        spec.terms = (kd, ce)
        loss = kd if spec.ce_weight == 0 else (1 - spec.ce_weight) * kd + spec.ce_weight * ce
        scale = reduce_tokens(torch.ones_like(total[0]), spec.num_tokens, n)
        ctx.grads = [g.mul_(scale) if g is not None else None for g in (grad_h, grad_w, grad_b, grad_t)]
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if ctx.grads is None:
            raise RuntimeError("cached-teacher chunked loss: backward ran twice on one loss; recompute the loss instead")
        grad_h, grad_w, grad_b, grad_t = ctx.grads
        ctx.grads = None
        weight_dtype, bias_dtype = ctx.dtypes
        if grad_h is not None:
            grad_h = grad_h.mul_(grad_output.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_output).to(weight_dtype)
        if grad_b is not None:
            grad_b = grad_b.mul_(grad_output).to(bias_dtype)
        if grad_t is not None:
            grad_t = grad_t * grad_output
        return grad_h, grad_w, grad_b, grad_t, None


def chunked_topk_divergence(
    loss: str | Loss,
    student_hidden: Tensor,
    student_weight: Tensor,
    topk: TopK,
    *,
    student_bias: Tensor | None = None,
    labels: Tensor | None = None,
    num_tokens: float | Tensor | None = None,
    temperature: float | Tensor = 1.0,
    chunk_size: int | None = None,
    use_closed_form: bool = True,
    ce_weight: float = 0.0,
    return_terms: bool = False,
    **params: float,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Same value and gradients as ``topk_divergence(name, h @ W.T + b, topk, ...)``.

    ``student_hidden [N, H]``, ``student_weight [V, H]``; ``topk`` holds N rows. Losses that
    are KL(p_t || q) (taid, fkl) use their closed-form gradient on the buckets; the others differentiate the
    ``[c, k + 1]`` bucket tensor of each chunk (a tiny graph), never the ``[c, V]`` logits.
    ``ce_weight`` and ``return_terms`` as in ``chunked_divergence``: ``(1 - ce_weight) * KD +
    ce_weight * CE(labels)`` from one pass.
    """
    loss = build_loss(loss, **params)
    name = loss.label()
    needs_labels = loss.needs_labels
    if not loss.needs_teacher:
        raise ValueError(f"loss {name!r} uses no teacher: call chunked_divergence({name!r}, ...) instead")
    if student_hidden.dim() != 2:
        raise ValueError(f"student_hidden must be 2-D [tokens, features], got shape {tuple(student_hidden.shape)}")
    n = student_hidden.shape[0]
    if topk.ids.shape[0] != n:
        raise ValueError(f"cached teacher has {topk.ids.shape[0]} tokens but the student has {n}: outputs are not aligned")
    if not 0.0 <= ce_weight <= 1.0:
        raise ValueError(f"ce_weight is the cross entropy's share of the loss, in [0, 1]; got {ce_weight}")
    if (needs_labels or ce_weight) and labels is None:
        raise ValueError(f"loss {name!r} needs labels= (the target token ids, shape [{n}])")
    vocab = student_weight.shape[0]
    check_ids(topk.ids, vocab)
    device = student_hidden.device
    ids = topk.ids.to(device, torch.long)
    topk = TopK(ids, topk.logprobs.to(device), topk.tail.to(device))
    temperature_tensor = temperature if isinstance(temperature, Tensor) else None
    spec = _Spec(
        loss=loss,
        temperature=None if temperature_tensor is not None else temperature,
        labels=bucket_labels(labels.reshape(-1).to(device), ids) if needs_labels else None,
        topk=topk,
        vocab=vocab,
        chunk_size=chunk_size or auto_chunk_size(vocab),
        num_tokens=num_tokens,
        interpolation=loss.interpolation() if temperature_tensor is None and use_closed_form else None,
        ce_weight=float(ce_weight),
        ce_labels=labels.reshape(-1).to(device) if ce_weight else None,
    )
    result = _ChunkedTopKDivergence.apply(student_hidden, student_weight, student_bias, temperature_tensor, spec)
    if return_terms:
        kd, ce = spec.terms
        return result, kd.detach(), ce.detach()
    return result
