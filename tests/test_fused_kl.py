"""The in-place closed-form kernel gives autograd's TAID / forward-KL values and gradients."""

import warnings

import pytest
import torch

from taid_vlm.losses import fused_kl
from taid_vlm.losses.divergences import forward_kl, taid_kl
from taid_vlm.losses.fused_kl import compiled_interpolated_kl_, interpolated_kl_


def reference(student, teacher, t, temperature):
    leaf = student.clone().requires_grad_()
    fn = forward_kl if t == 1.0 else taid_kl
    kwargs = {} if t == 1.0 else {"t": t}
    per_token = fn(leaf, teacher, temperature=temperature, **kwargs)
    (grad,) = torch.autograd.grad(per_token.sum(), leaf)
    return per_token.detach(), grad


def logits(seed, rows=11, vocab=37, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=g) * 3).to(dtype), (torch.randn(rows, vocab, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("t, temperature", [(0.0, 1.0), (0.4, 1.0), (1.0, 1.0), (0.7, 2.5), (1.0, 0.5)])
@pytest.mark.parametrize("block_rows", [None, 1, 4])
def test_matches_autograd(t, temperature, block_rows):
    student, teacher = logits(0)
    teacher[:, :4] = -torch.inf  # masked vocabulary entries
    ref_loss, ref_grad = reference(student, teacher, t, temperature)
    buffer = student.clone()
    loss = interpolated_kl_(buffer, teacher.clone(), t, temperature, block_rows=block_rows)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(buffer, ref_grad, rtol=1e-10, atol=1e-12)  # the gradient, in place


def test_student_minus_inf_where_teacher_has_no_mass_gives_zero_not_nan():
    student, teacher = logits(1)
    student[:3, 5] = -torch.inf
    teacher[:3, 5] = -torch.inf
    ref_loss, ref_grad = reference(student, teacher, 1.0, 1.0)
    buffer = student.clone()
    loss = interpolated_kl_(buffer, teacher.clone(), 1.0, 1.0)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(buffer, ref_grad)


def test_bad_buffers_are_a_clear_error():
    student, teacher = logits(2)
    with pytest.raises(ValueError, match="one shape and dtype"):
        interpolated_kl_(student, teacher[:, :-1].contiguous())
    with pytest.raises(ValueError, match="contiguous"):
        interpolated_kl_(student.t(), teacher.t())


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fused_kl, "_compiled", broken)
    monkeypatch.setattr(fused_kl, "compiler_available", lambda device="cpu": True)
    monkeypatch.setattr(fused_kl, "_COMPILE_FAILED", set())
    student, teacher = logits(3, dtype=torch.float32)
    ref_loss, ref_grad = reference(student, teacher, 0.5, 1.0)
    buffer = student.clone()
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*eager"):
        loss = compiled_interpolated_kl_(buffer, teacher.clone(), 0.5, 1.0)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(buffer, ref_grad)


def test_compiler_unavailable_runs_eager(monkeypatch):
    monkeypatch.setattr(fused_kl, "compiler_available", lambda device="cpu": False)
    monkeypatch.setattr(fused_kl, "_compiled", lambda: pytest.fail("must not compile without a compiler"))
    student, teacher = logits(4, dtype=torch.float32)
    ref_loss, _ = reference(student, teacher, 0.3, 1.0)
    torch.testing.assert_close(compiled_interpolated_kl_(student.clone(), teacher.clone(), 0.3, 1.0), ref_loss)


@pytest.mark.slow
@pytest.mark.skipif(not fused_kl.compiler_available("cpu"), reason="torch.compile needs a C++ compiler on CPU")
def test_compiled_kernel_matches_autograd():
    for seed, (t, temperature) in enumerate([(0.6, 1.0), (1.0, 1.7)]):
        for rows in (5, 9):  # one compiled kernel serves every chunk length (dynamic shapes)
            student, teacher = logits(seed, rows=rows, dtype=torch.float32)
            teacher[:, :2] = -torch.inf
            ref_loss, ref_grad = reference(student, teacher, t, temperature)
            buffer = student.clone()
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # a silent eager fallback would pass
                loss = compiled_interpolated_kl_(buffer, teacher.clone(), t, temperature)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(buffer, ref_grad, rtol=1e-5, atol=1e-6)
