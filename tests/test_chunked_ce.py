"""CE + KD in one chunked pass equals the two separate calls mixed, for every loss."""

import pytest
import torch

from taid_vlm.losses import LOSSES, CTKDTemperature, EngineOptions, Head, divergence, topk_of_logits

PARAMS = {"taid": {"t": 0.6}, "gjsd": {"beta": 0.3}, "akl": {"mu": 0.4}, "dkd": {"alpha": 1.0, "beta": 4.0}}
DISTILLATION = [name for name, cls in LOSSES.items() if cls.needs_teacher and not cls.ranked]
N, H, V = 29, 12, 40


def make(seed=0, teacher_vocab=V, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_()
    th = torch.randn(N, H + 3, generator=g, dtype=dtype)
    tw = torch.randn(teacher_vocab, H + 3, generator=g, dtype=dtype) * 0.5
    labels = torch.randint(0, V, (N,), generator=g)
    labels[3] = -100  # an ignored position: 0 loss, 0 gradient, still counted
    mask = torch.rand(N, generator=g) > 0.25
    return h, w, b, th, tw, labels, mask


def assert_close_rel(a, b, rel):
    scale = max(b.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rel * scale, (a - b).abs().max().item() / scale


CHUNK4 = EngineOptions(chunk_size=4)


def two_calls(name, ce_weight, h, w, b, teacher, labels, mask, **kw):
    common = dict(labels=labels, num_tokens=50, options=CHUNK4)
    kd = divergence(name, Head(h, w, b), teacher, mask, **common, **kw, **PARAMS.get(name, {}))
    ce = divergence("sft", Head(h, w, b), None, mask, **common)
    return (1 - ce_weight) * kd + ce_weight * ce, kd, ce


@pytest.mark.parametrize("name", DISTILLATION)
@pytest.mark.parametrize("teacher_as", ["hidden", "logits"])
def test_one_pass_equals_two_calls_values_and_gradients(name, teacher_as):
    h, w, b, th, tw, labels, mask = make(dtype=torch.float32)
    teacher = Head(th, tw) if teacher_as == "hidden" else th @ tw.t()
    ref, ref_kd, ref_ce = two_calls(name, 0.3, h, w, b, teacher, labels, mask)
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    got, kd, ce = divergence(name, Head(h, w, b), teacher, mask, labels=labels, num_tokens=50, return_terms=True,
                             options=EngineOptions(chunk_size=4, ce_weight=0.3), **PARAMS.get(name, {}))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert kd.item() == pytest.approx(ref_kd.item(), rel=1e-5) and ce.item() == pytest.approx(ref_ce.item(), rel=1e-5)
    for a, r in zip(torch.autograd.grad(got, (h, w, b)), ref_grads):
        assert_close_rel(a, r, 1e-5)


@pytest.mark.parametrize("name", ["taid", "fkl"])
@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize("ce_weight", [0.0, 0.5, 1.0])
def test_closed_form_and_autograd_paths_in_float64(name, closed_form, ce_weight):
    h, w, b, th, tw, labels, mask = make(seed=2)
    teacher = Head(th, tw)
    ref, _, _ = two_calls(name, ce_weight, h, w, b, teacher, labels, mask, temperature=1.7)
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    options = EngineOptions(chunk_size=4, ce_weight=ce_weight, closed_form=closed_form)
    got = divergence(name, Head(h, w, b), teacher, mask, labels=labels, num_tokens=50, temperature=1.7, options=options,
                     **PARAMS.get(name, {}))
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, r in zip(torch.autograd.grad(got, (h, w, b)), ref_grads):
        assert_close_rel(a, r, 1e-10)


def test_one_pass_matches_the_plain_path_on_full_logits():
    h, w, b, th, tw, labels, mask = make(seed=4)
    logits = h @ w.t() + b
    ref = 0.75 * divergence("taid", logits, th @ tw.t(), mask, t=0.4) + 0.25 * divergence("sft", logits, None, mask, labels=labels)
    got = divergence("taid", Head(h, w, b), Head(th, tw), mask, labels=labels, t=0.4,
                     options=EngineOptions(ce_weight=0.25, chunk_size=7))
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, r in zip(torch.autograd.grad(got, (h, w, b)), torch.autograd.grad(ref, (h, w, b))):
        assert_close_rel(a, r, 1e-10)


@pytest.mark.filterwarnings("ignore:student vocabulary")  # warned once per process, maybe by another test
def test_padded_student_head_ce_spans_every_row_kd_the_shared_ones():
    # The student's head has 6 padding rows the teacher lacks: CE still sees them (as two calls do).
    h, w, b, th, tw, labels, mask = make(seed=5, teacher_vocab=V - 6)
    teacher = Head(th, tw)
    ref, _, _ = two_calls("taid", 0.4, h, w, b, teacher, labels, mask)
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    got = divergence("taid", Head(h, w, b), teacher, mask, labels=labels, num_tokens=50, t=0.6,
                     options=EngineOptions(chunk_size=4, ce_weight=0.4))
    grads = torch.autograd.grad(got, (h, w, b))
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, r in zip(grads, ref_grads):
        assert_close_rel(a, r, 1e-10)
    assert torch.count_nonzero(grads[1][V - 6:]) > 0  # CE's gradient reaches the padding rows


def test_learned_temperature_gradient_carries_the_kd_weight():
    h, w, b, th, tw, labels, mask = make(seed=6, dtype=torch.float32)
    temp_ref, temp_fused = CTKDTemperature(1.5), CTKDTemperature(1.5)
    teacher = Head(th, tw)
    ref, _, _ = two_calls("ctkd", 0.3, h, w, b, teacher, labels, mask, temperature=temp_ref())
    got = divergence("ctkd", Head(h, w, b), teacher, mask, labels=labels, num_tokens=50, temperature=temp_fused(),
                     options=EngineOptions(chunk_size=4, ce_weight=0.3))
    ref.backward()
    got.backward()
    assert temp_fused.raw.grad.item() == pytest.approx(temp_ref.raw.grad.item(), rel=1e-4)


def test_bad_ce_weight_and_missing_labels_are_clear_errors():
    h, w, b, th, tw, labels, mask = make()
    with pytest.raises(ValueError, match="ce_weight.*in \\[0, 1\\]"):
        EngineOptions(ce_weight=1.5)
    half = EngineOptions(ce_weight=0.5)
    for student in (Head(h, w), h @ w.t()):  # the chunked and the plain path say the same
        with pytest.raises(ValueError, match="needs labels"):
            divergence("fkl", student, Head(th, tw), options=half)
        with pytest.raises(ValueError, match="student's own loss already"):
            divergence("sft", student, None, labels=labels, options=half)


@pytest.mark.parametrize("name", DISTILLATION)
@pytest.mark.parametrize("k", [5, V])
def test_cached_teacher_one_pass_equals_two_calls(name, k):
    h, w, b, th, tw, labels, mask = make(seed=7, dtype=torch.float32)
    labels_sel = labels[mask]
    topk = topk_of_logits((th @ tw.t())[mask], k)
    params = PARAMS.get(name, {})
    common = dict(labels=labels_sel, num_tokens=50)
    kd = divergence(name, Head(h[mask], w, b), topk, options=CHUNK4, **common, **params)
    ce = divergence("sft", Head(h[mask], w, b), None, options=CHUNK4, **common)
    ref = 0.7 * kd + 0.3 * ce
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    got, got_kd, got_ce = divergence(name, Head(h[mask], w, b), topk, return_terms=True,
                                     options=EngineOptions(chunk_size=4, ce_weight=0.3), **common, **params)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert got_kd.item() == pytest.approx(kd.item(), rel=1e-5) and got_ce.item() == pytest.approx(ce.item(), rel=1e-5)
    for a, r in zip(torch.autograd.grad(got, (h, w, b)), ref_grads):
        assert_close_rel(a, r, 1e-5)


def test_cached_teacher_learned_temperature_gradient_carries_the_kd_weight():
    h, w, b, th, tw, labels, mask = make(seed=8)
    topk = topk_of_logits(th @ tw.t(), 6)
    temperature_ref, temperature_fused = CTKDTemperature(1.5).double(), CTKDTemperature(1.5).double()
    common = dict(labels=labels, num_tokens=50, options=CHUNK4)
    kd = divergence("ctkd", Head(h, w, b), topk, temperature=temperature_ref(), **common)
    ref = 0.7 * kd + 0.3 * divergence("sft", Head(h, w, b), None, **common)
    got = divergence("ctkd", Head(h, w, b), topk, labels=labels, num_tokens=50, temperature=temperature_fused(),
                     options=EngineOptions(chunk_size=4, ce_weight=0.3))
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    ref.backward()
    got.backward()
    assert temperature_fused.raw.grad.item() == pytest.approx(temperature_ref.raw.grad.item(), rel=1e-10)
