"""The Triton chunk kernel gives the torch path's TAID / forward-KL values and gradients.

No GPU here: the kernel runs in Triton's interpreter (conftest sets TRITON_INTERPRET=1 before
anything imports Triton), on tiny rows with small blocks so that ragged vocabularies span
several blocks. One test compiles the kernel for a Hopper GPU (sm_90) without running it: the
interpreter accepts code the compiler would reject.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from taid_vlm.losses import triton_chunk
from taid_vlm.losses.divergences import forward_kl, taid_kl
from taid_vlm.losses.fused_kl import interpolated_kl_
from taid_vlm.losses.triton_chunk import interpolated_kl_triton_, resolve_chunk_kernel

pytestmark = [
    pytest.mark.skipif(not triton_chunk.interpreter_active(),
                       reason="needs Triton imported with TRITON_INTERPRET=1 (tests/conftest.py sets it)"),
    # numpy's -inf - -inf in the interpreter's lanes past V (never selected; a GPU says nothing)
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

BLOCK = 32  # entries per block: V = 37, 70, 100 end in a ragged block


def logits(seed, rows=4, vocab=70, scale=3.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale + offset
    teacher = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale
    return student, teacher


def autograd_reference(student, teacher, t, temperature):
    """fp64 autograd through the loss zoo's own divergences."""
    leaf = student.double().clone().requires_grad_()
    teacher = teacher.double()
    per_token = forward_kl(leaf, teacher, temperature) if t == 1.0 else taid_kl(leaf, teacher, t=t, temperature=temperature)
    (grad,) = torch.autograd.grad(per_token.sum(), leaf)
    return per_token.detach(), grad


def triton_step(student, teacher, t, temperature, **kwargs):
    buffer = student.clone()
    loss = interpolated_kl_triton_(buffer, teacher.clone(), t, temperature, block=BLOCK, **kwargs)
    return loss, buffer


@pytest.mark.parametrize("t, temperature, vocab", [(1.0, 1.0, 70), (0.4, 1.0, 100), (0.0, 1.0, 37), (0.7, 2.5, 70), (1.0, 0.5, 100)])
def test_fp32_matches_torch_path_and_autograd(t, temperature, vocab):
    student, teacher = (x.float() for x in logits(vocab, vocab=vocab))
    teacher[:, :5] = -torch.inf  # masked vocabulary entries (a padded head, a cached top-k)
    loss, grad = triton_step(student, teacher, t, temperature)
    torch_buffer = student.clone()
    torch_loss = interpolated_kl_(torch_buffer, teacher.clone(), t, temperature)
    torch.testing.assert_close(loss, torch_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, torch_buffer, rtol=1e-5, atol=1e-7)
    ref_loss, ref_grad = autograd_reference(student, teacher, t, temperature)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("t", [1.0, 0.5])
def test_bf16_logits_are_computed_in_fp32(t):
    """bf16 inputs: the result is the fp64 one on the same bf16 values (fp32 arithmetic inside),
    not a bf16 computation; a bf16 gradient output is off by its own rounding alone."""
    student, teacher = (x.bfloat16() for x in logits(1, vocab=100, scale=8.0))  # a wide logit spread
    ref_loss, ref_grad = autograd_reference(student, teacher, t, 1.0)
    grad32 = torch.empty(student.shape, dtype=torch.float32)
    loss = interpolated_kl_triton_(student, teacher, t, 1.0, grad_out=grad32, block=BLOCK)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    relative = (grad32.double() - ref_grad).norm() / ref_grad.norm()
    assert relative < 1e-5, relative
    grad16 = student.clone()
    interpolated_kl_triton_(grad16, teacher, t, 1.0, block=BLOCK)  # in place, rounded once on the store
    relative16 = (grad16.double() - ref_grad).norm() / ref_grad.norm()
    assert relative16 < 2**-8, relative16  # bf16 keeps 8 significant bits: ~0.2-0.4% is its rounding


def test_student_minus_inf_where_teacher_has_no_mass_gives_zero_not_nan():
    student, teacher = (x.float() for x in logits(2))
    student[:2, 3:40] = -torch.inf  # a whole first block and more, masked on both sides
    teacher[:2, 3:40] = -torch.inf
    loss, grad = triton_step(student, teacher, 1.0, 1.0)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    ref_loss, ref_grad = autograd_reference(student, teacher, 1.0, 1.0)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


def test_large_logits_do_not_cancel():
    """Logits far from 0 (a bias of 1000): the log-ratio is taken relative to the running maxima."""
    student, teacher = (x.float() for x in logits(3, offset=1000.0))
    loss, grad = triton_step(student, teacher, 0.5, 1.0)
    ref_loss, ref_grad = autograd_reference(student, teacher, 0.5, 1.0)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-5)
    # fp32 holds 1000 to ~6e-5: TAID's target (1000 + u) / 2 carries that rounding into p_t
    assert (grad.double() - ref_grad).norm() / ref_grad.norm() < 1e-4


def test_separate_gradient_output_leaves_both_inputs_untouched():
    student, teacher = (x.float() for x in logits(4))
    s_before, u_before = student.clone(), teacher.clone()
    grad = torch.full_like(student, float("nan"))  # every element must be written
    interpolated_kl_triton_(student, teacher, 0.3, 1.0, grad_out=grad, block=BLOCK)
    assert torch.equal(student, s_before) and torch.equal(teacher, u_before)
    torch.testing.assert_close(grad.double(), autograd_reference(student, teacher, 0.3, 1.0)[1], rtol=1e-5, atol=1e-7)


def test_row_views_with_a_stride_and_no_rows():
    student, teacher = (x.float() for x in logits(5, rows=6, vocab=80))
    view_s, view_u = student[:, :70], teacher[:, :70]  # rows 80 apart, 70 entries each
    grad = torch.empty(6, 70)
    loss = interpolated_kl_triton_(view_s, view_u, 1.0, 1.0, grad_out=grad, block=BLOCK)
    ref_loss, ref_grad = autograd_reference(view_s, view_u, 1.0, 1.0)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
    assert interpolated_kl_triton_(torch.empty(0, 70), torch.empty(0, 70)).shape == (0,)


def test_bad_inputs_are_clear_errors():
    student, teacher = (x.float() for x in logits(6))
    with pytest.raises(ValueError, match="one shape"):
        interpolated_kl_triton_(student, teacher[:, :-1])
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        interpolated_kl_triton_(student.double(), teacher.double())
    with pytest.raises(ValueError, match="contiguous"):
        interpolated_kl_triton_(student.t(), teacher.t())
    with pytest.raises(ValueError, match="t must lie in"):
        interpolated_kl_triton_(student, teacher, 1.5)
    with pytest.raises(ValueError, match="power of two"):
        interpolated_kl_triton_(student, teacher, block=48)


def test_which_kernel_a_setting_means(monkeypatch):
    assert resolve_chunk_kernel("torch", "cuda") == "torch"
    assert resolve_chunk_kernel("auto", "cpu") == "torch"  # never the interpreter by itself
    assert resolve_chunk_kernel("auto", "cuda", torch.bfloat16) == "triton"
    assert resolve_chunk_kernel("auto", "cuda", torch.float64) == "torch"
    assert resolve_chunk_kernel("triton", "cuda") == "triton"
    assert resolve_chunk_kernel("triton", "cpu") == "triton"  # asked for: TRITON_INTERPRET=1 here
    with pytest.raises(ValueError, match="handles float32, bfloat16, float16 logits, not float64"):
        resolve_chunk_kernel("triton", "cuda", torch.float64)
    with pytest.raises(ValueError, match="one of"):
        resolve_chunk_kernel("cuda", "cpu")
    monkeypatch.setattr(triton_chunk, "interpreter_active", lambda: False)
    with pytest.raises(ValueError, match="runs on CUDA devices.*chunk_kernel: torch or auto"):
        resolve_chunk_kernel("triton", "cpu")
    monkeypatch.setattr(triton_chunk, "tl", None)  # no Triton at all
    assert resolve_chunk_kernel("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="needs the triton package"):
        resolve_chunk_kernel("triton", "cuda")


COMPILE_FOR_HOPPER = textwrap.dedent("""
    import json, re, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from taid_vlm.losses import triton_chunk as tc
    out = {}
    for dtype, interpolate in (("fp32", True), ("bf16", False)):
        signature = dict(s_ptr="*" + dtype, u_ptr="*" + dtype, g_ptr="*" + dtype, loss_ptr="*fp32", s_stride="i64",
                         u_stride="i64", g_stride="i64", vocab="i32", w="fp32", temperature="fp32", neg_large="fp32",
                         INTERPOLATE="constexpr", BLOCK="constexpr")
        aligned = {(i,): [["tt.divisibility", 16]] for i in range(8)}  # what a launch on aligned buffers specialises
        source = ASTSource(tc._interpolated_kl_rows, signature, constexprs={"INTERPOLATE": interpolate, "BLOCK": 4096}, attrs=aligned)
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8}).asm["ptx"]
        out[dtype] = {"loads": sorted(set(re.findall(r"ld\\.global[.\\w]*", ptx))), "local": ".local" in ptx}
    print(json.dumps(out))
""")


def test_kernel_compiles_for_hopper_with_vector_loads_and_no_spills(tmp_path):
    """The compiled path, not the interpreter's: Triton's own compiler and ptxas, for sm_90."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "ptxas" in done.stderr and "No such file" in done.stderr:
        pytest.skip("Triton's ptxas is not shipped with this install")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for dtype, seen in result.items():
        assert seen["loads"] == ["ld.global.v4.b32"], (dtype, seen)  # 16-byte loads: 4 fp32 or 8 bf16 logits
        assert not seen["local"], dtype  # nothing spilled to local memory
