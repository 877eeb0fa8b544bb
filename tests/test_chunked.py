"""The chunked fused-linear engine gives the plain path's loss and gradients for every loss."""

import pytest
import torch

from taid_vlm.losses import LOSS_NAMES, CTKDTemperature, EngineOptions, Head, divergence

PARAMS = {"taid": {"t": 0.6}, "gjsd": {"beta": 0.3}, "akl": {"mu": 0.4}, "dkd": {"alpha": 1.0, "beta": 4.0}}
N, H, V = 29, 12, 40


def make(dtype=torch.float32, seed=0, teacher_vocab=V, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) * 0.5).to(dtype).requires_grad_()
    b = torch.randn(V, generator=g).to(dtype).requires_grad_() if bias else None
    th = torch.randn(N, H + 3, generator=g).to(dtype)
    tw = (torch.randn(teacher_vocab, H + 3, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    mask = torch.rand(N, generator=g) > 0.25
    return h, w, b, th, tw, labels, mask


def plain(name, h, w, b, th, tw, labels, mask, **kw):
    logits = h @ w.t() + (b if b is not None else 0)
    return divergence(name, logits, th @ tw.t(), mask, labels=labels, **kw)


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def assert_close_rel(a, b, rel):
    scale = max(b.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rel * scale, (a - b).abs().max().item() / scale


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("teacher_as", ["hidden", "logits"])
def test_values_and_gradients_match_plain_path(name, teacher_as):
    h, w, b, th, tw, labels, mask = make()
    params = PARAMS.get(name, {})
    ref = plain(name, h, w, b, th, tw, labels, mask, **params)
    ref_grads = grads(ref, (h, w, b))
    teacher = Head(th, tw) if teacher_as == "hidden" else th @ tw.t()
    got = divergence(name, Head(h, w, b), teacher, mask, labels=labels, options=EngineOptions(chunk_size=4), **params)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, r in zip(grads(got, (h, w, b)), ref_grads):
        assert_close_rel(a, r, 1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, N, 1000, None])
def test_any_chunk_size(chunk_size):
    h, w, b, th, tw, labels, mask = make(seed=3)
    ref = plain("taid", h, w, b, th, tw, labels, mask, t=0.5)
    got = divergence("taid", Head(h, w, b), Head(th, tw), mask, t=0.5, options=EngineOptions(chunk_size=chunk_size))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_bf16_inputs_agree_with_plain_bf16_path():
    h, w, b, th, tw, labels, mask = make(dtype=torch.bfloat16, bias=False)
    ref = plain("fkl", h, w, None, th, tw, labels, mask)
    got = divergence("fkl", Head(h, w), Head(th, tw), mask, options=EngineOptions(chunk_size=5))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-4)
    gh, gw = grads(got, (h, w))
    rh, rw = grads(ref, (h, w))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    assert_close_rel(gh.float(), rh.float(), 2e-2)
    assert_close_rel(gw.float(), rw.float(), 2e-2)


def test_directional_derivatives_float64_through_engine():
    # The engine hands its gradients over once (no retain_graph), so torch's gradcheck, which
    # calls backward repeatedly on one output, does not apply; central differences do.
    h, w, b, th, tw, labels, mask = make(dtype=torch.float64)

    def f(h_, w_, b_):
        return divergence("rkl", Head(h_, w_, b_), Head(th, tw), mask, options=EngineOptions(chunk_size=6))

    analytic = torch.autograd.grad(f(h, w, b), [h, w, b])
    g = torch.Generator().manual_seed(7)
    eps = 1e-6
    for _ in range(4):
        dirs = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in (h, w, b)]
        with torch.no_grad():
            plus = f(*(x + eps * d for x, d in zip((h, w, b), dirs)))
            minus = f(*(x - eps * d for x, d in zip((h, w, b), dirs)))
        numeric = (plus - minus) / (2 * eps)
        predicted = sum((a * d).sum() for a, d in zip(analytic, dirs))
        assert numeric.item() == pytest.approx(predicted.item(), rel=1e-6, abs=1e-9)


def test_second_backward_is_a_clear_error():
    h, w, b, th, tw, labels, mask = make()
    loss = divergence("fkl", Head(h, w), Head(th, tw))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_padded_teacher_head_and_num_tokens():
    h, w, b, th, tw, labels, mask = make(teacher_vocab=V + 24)
    with pytest.warns(UserWarning, match="shared first"):
        ref = plain("fkl", h, w, b, th, tw, labels, mask, num_tokens=100)
    got = divergence("fkl", Head(h, w, b), Head(th, tw), mask, num_tokens=100, options=EngineOptions(chunk_size=8))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_student_head_with_padding_rows_gets_zero_gradient_there():
    h, w, b, th, tw, labels, mask = make(teacher_vocab=V - 6)
    loss = divergence("taid", Head(h, w, b), Head(th, tw), mask, t=0.7)
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert gw.shape == w.shape and torch.count_nonzero(gw[V - 6 :]) == 0 and torch.count_nonzero(gb[V - 6 :]) == 0


def test_ctkd_learned_temperature_gets_its_gradient():
    h, w, b, th, tw, labels, mask = make()
    temp_ref, temp_chunked = CTKDTemperature(1.5), CTKDTemperature(1.5)
    ref = plain("ctkd", h, w, b, th, tw, labels, mask, temperature=temp_ref())
    got = divergence("ctkd", Head(h, w, b), Head(th, tw), mask, temperature=temp_chunked(), options=EngineOptions(chunk_size=3))
    ref.backward()
    got.backward()
    assert temp_chunked.raw.grad is not None
    assert temp_chunked.raw.grad.item() == pytest.approx(temp_ref.raw.grad.item(), rel=1e-4)


def test_all_zero_mask_and_errors():
    h, w, b, th, tw, labels, mask = make()
    zero = divergence("fkl", Head(h, w), Head(th, tw), torch.zeros(N, dtype=torch.bool))
    assert zero.item() == 0.0
    (gh,) = torch.autograd.grad(zero, h)
    assert torch.count_nonzero(gh) == 0
    with pytest.raises(ValueError, match="2-D.*flatten"):
        divergence("fkl", Head(h.reshape(1, N, H), w), Head(th, tw))
    with pytest.raises(ValueError, match="not aligned"):
        divergence("fkl", Head(h, w), Head(th[:-1], tw))
    with pytest.raises(ValueError, match="needs the teacher"):
        divergence("fkl", Head(h, w))
    with pytest.raises(ValueError, match="needs labels"):
        divergence("sft", Head(h, w))


def test_frozen_head_only_hidden_gets_gradient():
    h, w, b, th, tw, labels, mask = make()
    w = w.detach()
    loss = divergence("sft", Head(h, w), None, mask, labels=labels)
    (gh,) = torch.autograd.grad(loss, h)
    assert torch.isfinite(gh).all() and gh.abs().sum() > 0


@pytest.mark.parametrize("name", ["taid", "fkl"])
def test_closed_form_path_matches_autograd_path_and_leaves_inputs_untouched(name):
    h, w, b, th, tw, labels, mask = make(seed=5)
    teacher_logits = th @ tw.t()
    before = teacher_logits.clone()
    params = PARAMS.get(name, {})
    common = dict(temperature=1.7, **params)
    fast = divergence(name, Head(h, w, b), teacher_logits, options=EngineOptions(chunk_size=6, closed_form=True), **common)
    fast_grads = grads(fast, (h, w, b))
    slow = divergence(name, Head(h, w, b), teacher_logits, options=EngineOptions(chunk_size=6, closed_form=False), **common)
    slow_grads = grads(slow, (h, w, b))
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    for a, r in zip(fast_grads, slow_grads):
        assert_close_rel(a, r, 1e-5)
    assert torch.equal(teacher_logits, before)


def test_closed_form_handles_masked_vocabulary():
    h, w, b, th, tw, labels, mask = make(seed=6)
    teacher_logits = th @ tw.t()
    teacher_logits[:, :3] = -torch.inf
    loss = divergence("taid", Head(h, w), teacher_logits, t=1.0, options=EngineOptions(chunk_size=5))
    gh, gw = grads(loss, (h, w))
    assert torch.isfinite(loss) and torch.isfinite(gh).all() and torch.isfinite(gw).all()
    ref = divergence("fkl", h @ w.t(), teacher_logits)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("budget", [None, 0.001])
def test_default_and_budgeted_chunk_sizes_match_plain_path(name, budget):
    # None: the device's default budget (one chunk here); 0.001 MiB: the 8-token minimum, 4 chunks.
    h, w, b, th, tw, labels, mask = make(seed=8)
    params = PARAMS.get(name, {})
    ref = plain(name, h, w, b, th, tw, labels, mask, **params)
    got = divergence(name, Head(h, w, b), Head(th, tw), mask, labels=labels,
                     options=EngineOptions(chunk_memory_mb=budget), **params)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, r in zip(grads(got, (h, w, b)), grads(ref, (h, w, b))):
        assert_close_rel(a, r, 1e-5)


def test_chunk_size_follows_the_memory_budget():
    from taid_vlm.losses.chunked import DEFAULT_CHUNK_MEMORY_MB, MAX_CHUNK, MIN_CHUNK, auto_chunk_size

    # 4 fp32 rows of 151,936 per token on the closed-form path: 512 MiB -> 220 tokens.
    assert auto_chunk_size(151936, 512) == 512 * 2**20 // (4 * 4 * 151936) == 220
    assert auto_chunk_size(151936) == auto_chunk_size(151936, DEFAULT_CHUNK_MEMORY_MB["cpu"])
    assert auto_chunk_size(151936, device="cuda") > auto_chunk_size(151936, device="cpu")
    assert auto_chunk_size(151936, 512, rows_per_token=8) == 110
    assert auto_chunk_size(151936, 0.01) == MIN_CHUNK and auto_chunk_size(16, 1e6) == MAX_CHUNK
    with pytest.raises(ValueError, match="chunk_memory_mb must be positive"):
        auto_chunk_size(1000, 0)


def test_engine_uses_the_budgeted_chunk_and_chunk_size_overrides_it(monkeypatch):
    import taid_vlm.losses.chunked as chunked

    seen = []
    real = chunked.interpolated_kl_
    monkeypatch.setattr(chunked, "interpolated_kl_", lambda s, u, *a: seen.append(s.shape[0]) or real(s, u, *a))
    h, w, b, th, tw, labels, mask = make(seed=9)
    budget = 12 * 4 * 4 * V / 2**20  # room for 12 tokens of 4 fp32 rows
    divergence("taid", Head(h, w), Head(th, tw), t=0.5, options=EngineOptions(chunk_memory_mb=budget))
    assert seen == [12, 12, 5]
    seen.clear()
    divergence("taid", Head(h, w), Head(th, tw), t=0.5, options=EngineOptions(chunk_memory_mb=budget, chunk_size=10))
    assert seen == [10, 10, 9]
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        EngineOptions(chunk_size=0)


@pytest.mark.parametrize("name", ["taid", "fkl"])
def test_bf16_head_with_bias_on_the_closed_form_path(name):
    h, w, b, th, tw, labels, mask = make(dtype=torch.bfloat16, seed=10)
    params = PARAMS.get(name, {})
    ref = plain(name, h, w, b, th, tw, labels, mask, **params)
    got = divergence(name, Head(h, w, b), Head(th, tw), mask, options=EngineOptions(chunk_size=6), **params)
    assert got.item() == pytest.approx(ref.item(), rel=1e-4)
    for a, r in zip(grads(got, (h, w, b)), grads(ref, (h, w, b))):
        assert a.dtype == torch.bfloat16
        assert_close_rel(a.float(), r.float(), 2e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["taid", "fkl"])
def test_compiled_kernel_matches_plain_path(name):
    import warnings

    from taid_vlm.losses.fused_kl import compiler_available

    if not compiler_available("cpu"):
        pytest.skip("torch.compile needs a C++ compiler on CPU")
    h, w, b, th, tw, labels, mask = make(seed=11)
    params = PARAMS.get(name, {})
    ref = plain(name, h, w, b, th, tw, labels, mask, temperature=1.3, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent eager fallback would pass
        got = divergence(name, Head(h, w, b), Head(th, tw), mask, temperature=1.3,
                         options=EngineOptions(chunk_size=8, compile=True), **params)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, r in zip(grads(got, (h, w, b)), grads(ref, (h, w, b))):
        assert_close_rel(a, r, 1e-5)


@pytest.mark.parametrize("name", ["taid", "fkl", "rkl", "dkd"])
@pytest.mark.parametrize("teacher_as", ["head", "topk"])
def test_softcapped_heads_match_the_plain_path_on_capped_logits(name, teacher_as):
    """Gemma 2's final-logit softcap inside the chunk, on the student (gradient included) and a
    teacher head, with the fused CE: the plain path on ``cap * tanh(z / cap)`` logits, fp64."""
    from taid_vlm.losses import topk_of_logits

    h, w, b, th, tw, labels, mask = (x.double() if x.is_floating_point() else x for x in make(seed=12))
    h, w, b = (x.detach().mul(4).requires_grad_() for x in (h, w, b))  # logits large enough for the cap to bite
    cap, params = 3.0, PARAMS.get(name, {})
    capped_student = cap * torch.tanh((h @ w.t() + b) / cap)
    capped_teacher = cap * torch.tanh((4 * th @ tw.t()) / cap)
    teacher = Head(4 * th, tw, softcap=cap) if teacher_as == "head" else topk_of_logits(capped_teacher, 9)
    reference_teacher = capped_teacher if teacher_as == "head" else teacher
    options = EngineOptions(chunk_size=6, ce_weight=0.3)
    ref = divergence(name, capped_student, reference_teacher, mask, labels=labels, options=options, **params)
    got = divergence(name, Head(h, w, b, softcap=cap), teacher, mask, labels=labels, options=options, **params)
    plain = divergence(name, Head(h, w, b, softcap=cap), teacher, mask, labels=labels,
                       options=EngineOptions(chunked=False, ce_weight=0.3), **params)
    assert got.item() == pytest.approx(ref.item(), rel=1e-10) and plain.item() == pytest.approx(ref.item(), rel=1e-12)
    uncapped = divergence(name, Head(h, w, b), teacher, mask, labels=labels, options=options, **params)
    assert abs(uncapped.item() - ref.item()) > 1e-3 * abs(ref.item())  # the cap changed the loss
    for a, r in zip(grads(got, (h, w, b)), grads(ref, (h, w, b))):
        assert_close_rel(a, r, 1e-10)
    with pytest.raises(ValueError, match="softcap must be a positive number"):
        Head(h, w, softcap=0.0)


@pytest.mark.parametrize("student_as", ["head", "logits"])
def test_the_math_dtype_option_widens_fp32_inputs(student_as):
    h, w, b, th, tw, labels, mask = make(seed=13)
    student = Head(h, w, b) if student_as == "head" else h @ w.t() + b
    got = divergence("taid", student, Head(th, tw), mask, t=0.4, options=EngineOptions(chunk_size=5, dtype=torch.float64))
    ref = divergence("taid", (h @ w.t() + b).double(), (th @ tw.t()).double(), mask, t=0.4)
    # the same fp32 logits (a chunk's fp32 GEMM may round differently from the whole one), fp64 math
    assert got.dtype == torch.float64 and got.item() == pytest.approx(ref.item(), rel=1e-6 if student_as == "head" else 1e-12)
    gh, gw = grads(got, (h, w))
    assert gh.dtype == gw.dtype == torch.float32  # gradients in the inputs' dtype
