"""Top-k + tail divergences (a cached teacher): exact at k = V, bounded at k = 64, chunked = plain."""

import pytest
import torch

from taid_vlm.losses import LOSSES, EngineOptions, Head, TopK, divergence, topk_of_logits
from taid_vlm.losses.topk import bucket_labels

ZOO = [name for name, cls in LOSSES.items() if cls.needs_teacher and not cls.ranked]


def _params(name: str) -> dict:
    return {"t": 0.6} if name == "taid" else {}


def _problem(n=13, vocab=50, hidden=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, dtype=dtype, requires_grad=True)
    teacher = torch.randn(n, vocab, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, vocab, (n,), generator=g)
    return h, w, teacher, labels


@pytest.mark.parametrize("name", ZOO)
def test_k_equal_to_vocab_is_the_full_loss(name):
    """No tail: every loss and its gradients equal the full-vocabulary loss (fp64, 1e-12)."""
    h, w, teacher, labels = _problem()
    topk = topk_of_logits(teacher, 10_000)
    assert topk.k == 50 and torch.isneginf(topk.tail).all()
    reference = divergence(name, h @ w.t(), teacher, labels=labels, **_params(name))
    plain = divergence(name, h @ w.t(), topk, labels=labels, **_params(name))
    chunked = divergence(name, Head(h, w), topk, labels=labels, options=EngineOptions(chunk_size=4), **_params(name))
    assert plain.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-12)
    assert chunked.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-12)
    expected = torch.autograd.grad(reference, (h, w))
    for got in (torch.autograd.grad(plain, (h, w)), torch.autograd.grad(chunked, (h, w))):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ZOO)
def test_chunked_equals_plain_with_a_tail(name):
    h, w, teacher, labels = _problem(seed=1)
    topk = topk_of_logits(teacher, 7)
    plain = divergence(name, h @ w.t(), topk, labels=labels, num_tokens=20, **_params(name))
    chunked = divergence(name, Head(h, w), topk, labels=labels, num_tokens=20, options=EngineOptions(chunk_size=3),
                         **_params(name))
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(chunked, (h, w)), torch.autograd.grad(plain, (h, w))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_chunked_learned_temperature_gets_its_gradient():
    h, w, teacher, _ = _problem(seed=2)
    topk = topk_of_logits(teacher, 9)
    for engine in ("plain", "chunked"):
        temperature = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        if engine == "plain":
            loss = divergence("ctkd", h @ w.t(), topk, temperature=temperature)
        else:
            loss = divergence("ctkd", Head(h, w), topk, temperature=temperature, options=EngineOptions(chunk_size=5))
        (grad,) = torch.autograd.grad(loss, temperature)
        if engine == "plain":
            expected = grad
        else:
            torch.testing.assert_close(grad, expected)


def _tail_mass(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, -1).scatter(-1, ids, 0.0).sum(-1)


def test_k64_on_random_logits_stays_within_the_stated_bounds():
    """The bounds docs/TEACHER_CACHE.md states, on random logits (V = 4096, k = 64):

    - fkl: 0 <= KL_full - KL_k = P_tail * KL(p_tail || q_tail) <= P_tail * range_tail(z_T - z_s)
      (the chain rule of KL; range = max - min over the tail tokens);
    - tvd: 0 <= TV_full - TV_k <= min(P_tail, Q_tail);
    - every other f-divergence of the zoo only shrinks (data processing): loss_k <= loss_full.
    """
    g = torch.Generator().manual_seed(7)
    n, vocab, k = 32, 4096, 64
    student = torch.randn(n, vocab, generator=g, dtype=torch.float64) * 2
    teacher = student + torch.randn(n, vocab, generator=g, dtype=torch.float64)  # a related teacher
    topk = topk_of_logits(teacher, k)
    p_tail = _tail_mass(teacher, topk.ids)
    q_tail = _tail_mass(student, topk.ids)
    torch.testing.assert_close(topk.tail.exp(), p_tail)

    def per_token(name, **params):
        full = torch.stack([divergence(name, student[i:i + 1], teacher[i:i + 1], **params) for i in range(n)])
        cut = torch.stack([divergence(name, student[i:i + 1], topk.select(torch.arange(n) == i), **params)
                           for i in range(n)])
        return full, cut

    full, cut = per_token("fkl")
    gap = torch.where(torch.zeros_like(teacher, dtype=torch.bool).scatter(-1, topk.ids, True),
                      torch.full_like(teacher, float("nan")), teacher - student)
    spread = gap.nan_to_num(-torch.inf).amax(-1) - gap.nan_to_num(torch.inf).amin(-1)
    assert (full - cut >= -1e-12).all()
    assert (full - cut <= p_tail * spread + 1e-12).all()
    assert (full - cut).max() > 1e-4  # the bound is exercised, not vacuous

    full, cut = per_token("tvd")
    assert (full - cut >= -1e-12).all() and (full - cut <= torch.minimum(p_tail, q_tail) + 1e-12).all()

    for name, params in (("rkl", {}), ("gjsd", {"beta": 0.5}), ("skew_fkl", {"skew": 0.1}), ("skew_rkl", {"skew": 0.1})):
        full, cut = per_token(name, **params)
        assert (cut <= full + 1e-12).all(), name


def test_bucket_labels_and_bad_ids():
    ids = torch.tensor([[5, 2, 9], [1, 0, 3]])
    assert bucket_labels(torch.tensor([9, 7]), ids).tolist() == [2, 3]  # 7 is in the tail bucket
    assert bucket_labels(torch.tensor([-100, 0]), ids).tolist() == [-100, 1]
    topk = TopK(torch.tensor([[60, 1]]), torch.zeros(1, 2), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="outside the student's vocabulary of 50.*another tokenizer"):
        divergence("fkl", torch.zeros(1, 50), topk)
    with pytest.raises(ValueError, match="outside the student's vocabulary of 50.*another tokenizer"):
        divergence("fkl", Head(torch.zeros(1, 4), torch.zeros(50, 4)), topk)


def test_fp32_topk_matches_the_engine_on_full_logits():
    """What the cached run relies on: at k = V the fp32 chunked path equals the live chunked path."""
    h, w, teacher, _ = _problem(n=40, vocab=300, hidden=16, seed=3, dtype=torch.float32)
    options = EngineOptions(chunk_size=16)
    live = divergence("taid", Head(h, w), teacher, t=0.5, options=options)
    cached = divergence("taid", Head(h, w), topk_of_logits(teacher, 300), t=0.5, options=options)
    assert cached.item() == pytest.approx(live.item(), rel=1e-5)
