"""Per-token divergences between a student and a teacher over one vocabulary.

Each function takes fp32 logits ``[n, V]`` for n tokens and returns the loss of every token,
``[n]``. Reduction, masking, chunking and dtype handling live elsewhere (``api.py``,
``chunked.py``); which function a loss name means, and with what numbers, is said by the loss
classes of ``zoo.py``.

Conventions shared by all of them:
- p is the teacher distribution, q the student's (softmax of the logits after ``/ temperature``).
- KL-type losses are multiplied by ``temperature**2`` (Hinton et al.) so their gradient scale
  does not depend on the temperature; at the paper's temperature 1 this changes nothing.
- A ``-inf`` logit (a masked vocabulary entry) contributes exactly 0 where its probability is 0,
  never NaN: ``0 * log 0`` terms are dropped with ``torch.where``, not multiplied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Interpolation and skew mixtures need finite stand-ins for -inf logits: 0 * -inf is NaN.
_NEG_LARGE = torch.finfo(torch.float32).min / 4


def _kl_from_logprobs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row, with 0 log 0 = 0 so that masked (-inf) entries are harmless."""
    p = log_p.exp()
    support = p > 0
    # Zero both logs off the support BEFORE subtracting: -inf - -inf would be NaN there, and a
    # NaN in the unused branch of torch.where still poisons the backward pass.
    zero = torch.zeros_like(p)
    diff = torch.where(support, log_p, zero) - torch.where(support, log_q, zero)
    return (p * diff).sum(-1)


def _finite(logits: Tensor) -> Tensor:
    return logits.clamp_min(_NEG_LARGE)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a * a + (1 - weight_a) * b), stable in log space."""
    if weight_a <= 0.0:
        return log_b
    if weight_a >= 1.0:
        return log_a
    # Finite stand-ins: logaddexp's gradient at (-inf, -inf) is NaN.
    return torch.logaddexp(_finite(log_a) + math.log(weight_a), _finite(log_b) + math.log(1.0 - weight_a))


def forward_kl(student: Tensor, teacher: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """KL(p || q): mass-covering, averages the teacher's modes."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    return _kl_from_logprobs(log_p, log_q) * temperature**2


def reverse_kl(student: Tensor, teacher: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """KL(q || p): mode-seeking, can collapse onto one of the teacher's modes."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    return _kl_from_logprobs(log_q, log_p) * temperature**2


def total_variation(student: Tensor, teacher: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """0.5 * sum |p - q|; bounded, so it is not rescaled by the temperature."""
    q = F.softmax(student / temperature, dim=-1)
    p = F.softmax(teacher / temperature, dim=-1)
    return 0.5 * (p - q).abs().sum(-1)


def generalized_jsd(student: Tensor, teacher: Tensor, beta: float = 0.5, temperature: float | Tensor = 1.0) -> Tensor:
    """GKD's generalised JSD: beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q.

    As in GKD's public implementation, the endpoints are the two KLs rather than the
    degenerate 0: beta=0 is forward KL(p||q), beta=1 is reverse KL(q||p).
    """
    if beta <= 0.0:
        return forward_kl(student, teacher, temperature)
    if beta >= 1.0:
        return reverse_kl(student, teacher, temperature)
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    log_m = _log_mixture(log_p, log_q, beta)
    jsd = beta * _kl_from_logprobs(log_p, log_m) + (1.0 - beta) * _kl_from_logprobs(log_q, log_m)
    return jsd * temperature**2


def skew_forward_kl(student: Tensor, teacher: Tensor, skew: float = 0.1, temperature: float | Tensor = 1.0) -> Tensor:
    """DistiLLM's skew KL: KL(p || skew*p + (1-skew)*q); bounded even where q is tiny."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    return _kl_from_logprobs(log_p, _log_mixture(log_p, log_q, skew)) * temperature**2


def skew_reverse_kl(student: Tensor, teacher: Tensor, skew: float = 0.1, temperature: float | Tensor = 1.0) -> Tensor:
    """DistiLLM's skew reverse KL: KL(q || skew*q + (1-skew)*p)."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    return _kl_from_logprobs(log_q, _log_mixture(log_q, log_p, skew)) * temperature**2


def adaptive_kl(student: Tensor, teacher: Tensor, mu: float = 0.5, temperature: float | Tensor = 1.0) -> Tensor:
    """Adaptive KL (Wu et al. 2024): weigh forward and reverse KL by where the error lies.

    The head is the smallest set of most-probable teacher tokens whose cumulative mass reaches
    ``mu``; FKL is weighted by the share of |p - q| on the head and RKL by the share on the
    tail. As in the authors' code the weights are part of the graph (not detached); the head
    itself depends on the teacher only.
    """
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    p, q = log_p.exp(), log_q.exp()
    with torch.no_grad():
        sorted_p, order = p.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p
        head = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before < mu)
    gap = (p - q).abs()
    g_head = torch.where(head, gap, torch.zeros_like(gap)).sum(-1)
    g_tail = torch.where(head, torch.zeros_like(gap), gap).sum(-1)
    total = (g_head + g_tail).clamp_min(torch.finfo(gap.dtype).tiny)
    w_head, w_tail = g_head / total, g_tail / total
    fkl = _kl_from_logprobs(log_p, log_q)
    rkl = _kl_from_logprobs(log_q, log_p)
    return (w_head * fkl + w_tail * rkl) * temperature**2


def taid_kl(student: Tensor, teacher: Tensor, t: float = 0.5, temperature: float | Tensor = 1.0) -> Tensor:
    """TAID: KL(p_t || q), p_t = softmax((1-t) * stopgrad(z_s) + t * z_T) in logit space.

    The gradient w.r.t. the student logits is ``(q - p_t) / temperature * T**2``; at t=1 this is
    forward KL, at t=0 the target is the student itself and the gradient vanishes.
    """
    if not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"taid: t must lie in [0, 1], got {t}")
    z_s = student / temperature
    z_t = teacher / temperature
    target_logits = (1.0 - t) * _finite(z_s.detach()) + t * _finite(z_t)
    target_logits = torch.where(torch.isneginf(z_t) & torch.isneginf(z_s), torch.full_like(z_t, -torch.inf), target_logits)
    log_target = F.log_softmax(target_logits, dim=-1)
    log_q = F.log_softmax(z_s, dim=-1)
    return _kl_from_logprobs(log_target, log_q) * temperature**2


def cross_entropy(student: Tensor, teacher: Tensor | None, labels: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """SFT: cross entropy on the labels; the teacher is ignored. -100 labels give 0."""
    del teacher, temperature
    safe = labels.clamp_min(0)
    ce = F.cross_entropy(student, safe, reduction="none")
    return torch.where(labels >= 0, ce, torch.zeros_like(ce))


def decoupled_kd(
    student: Tensor, teacher: Tensor, labels: Tensor, alpha: float = 1.0, beta: float = 8.0, temperature: float | Tensor = 1.0
) -> Tensor:
    """DKD (Zhao et al. 2022): target-class KD (binary) + non-target-class KD, weighted apart.

    TCKD compares [p(target), 1 - p(target)]; NCKD compares the distributions over the other
    tokens, renormalised. Decoupling lets the non-target "dark knowledge" get its own weight.
    """
    z_s = student / temperature
    z_t = teacher / temperature
    safe = labels.clamp_min(0).unsqueeze(-1)
    log_q = F.log_softmax(z_s, dim=-1)
    log_p = F.log_softmax(z_t, dim=-1)
    log_q_target = log_q.gather(-1, safe).squeeze(-1)
    log_p_target = log_p.gather(-1, safe).squeeze(-1)
    binary_q = torch.stack([log_q_target, torch.log1p(-log_q_target.exp().clamp(max=1 - 1e-7))], dim=-1)
    binary_p = torch.stack([log_p_target, torch.log1p(-log_p_target.exp().clamp(max=1 - 1e-7))], dim=-1)
    tckd = _kl_from_logprobs(binary_p, binary_q)
    is_target = torch.zeros_like(z_s, dtype=torch.bool).scatter(-1, safe, True)
    minus_inf = torch.full_like(z_s, -torch.inf)
    nckd = _kl_from_logprobs(
        F.log_softmax(torch.where(is_target, minus_inf, z_t), dim=-1),
        F.log_softmax(torch.where(is_target, minus_inf, z_s), dim=-1),
    )
    loss = (alpha * tckd + beta * nckd) * temperature**2
    return torch.where(labels >= 0, loss, torch.zeros_like(loss))


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.scale * grad, None


class CTKDTemperature(torch.nn.Module):
    """CTKD's learnable global temperature (Li et al. 2023).

    The temperature is trained adversarially: its gradient is reversed, so the optimiser
    raises the distillation loss through it while the student lowers it (a curriculum of
    growing difficulty). ``reversal_scale`` (CTKD's lambda) is usually ramped from 0 to 1.
    The raw parameter is squashed into ``[min_temperature, max_temperature]``.
    """

    def __init__(self, initial: float = 1.0, min_temperature: float = 0.5, max_temperature: float = 10.0):
        super().__init__()
        if not min_temperature < initial < max_temperature:
            raise ValueError(f"CTKDTemperature: initial {initial} must lie inside ({min_temperature}, {max_temperature})")
        self.min_temperature, self.max_temperature = min_temperature, max_temperature
        span = max_temperature - min_temperature
        fraction = (initial - min_temperature) / span
        self.raw = torch.nn.Parameter(torch.logit(torch.tensor(fraction, dtype=torch.float32)))

    def forward(self, reversal_scale: float = 1.0) -> Tensor:
        span = self.max_temperature - self.min_temperature
        temperature = self.min_temperature + span * torch.sigmoid(self.raw)
        return _GradientReversal.apply(temperature, reversal_scale)


def ctkd_kl(student: Tensor, teacher: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Forward KL at a temperature that is itself learned (pass ``CTKDTemperature()(lambda)``)."""
    return forward_kl(student, teacher, temperature)
