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


# ---- the kernel as the engine's per-chunk step (chunk_kernel) ----------------------------------------


def engine_pair(seed, n=11, hidden=8, vocab=45, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student_h = torch.randn(n, hidden, generator=g).to(dtype)
    student_w = (torch.randn(vocab, hidden, generator=g) * 0.8).to(dtype)
    teacher_h = torch.randn(n, hidden + 4, generator=g).to(dtype)
    teacher_w = (torch.randn(vocab, hidden + 4, generator=g) * 0.8).to(dtype)
    return student_h, student_w, teacher_h, teacher_w


def engine_run(kernel, pair, loss="taid", mask=None, **options):
    from taid_vlm.losses import EngineOptions, Head, divergence

    student_h, student_w, teacher_h, teacher_w = pair
    h, w = student_h.clone().requires_grad_(), student_w.clone().requires_grad_()
    params = {"t": 0.6} if loss == "taid" else {}
    value = divergence(loss, Head(h, w), Head(teacher_h, teacher_w), mask,
                       options=EngineOptions(chunk_kernel=kernel, chunk_size=4, **options), **params)
    value.backward()
    return value.detach(), h.grad, w.grad


@pytest.mark.parametrize("loss", ["taid", "fkl"])
def test_engine_with_the_triton_step_equals_the_torch_step(loss):
    pair = engine_pair(7)
    mask = torch.ones(11, dtype=torch.bool)
    mask[[1, 5, 6]] = False  # masked tokens: 8 selected, chunks of 4, 4
    triton_value, triton_h, triton_w = engine_run("triton", pair, loss, mask)
    torch_value, torch_h, torch_w = engine_run("torch", pair, loss, mask)
    torch.testing.assert_close(triton_value, torch_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(triton_h, torch_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(triton_w, torch_w, rtol=1e-5, atol=1e-6)
    assert not triton_h[~mask].any()  # masked tokens get no gradient


def test_engine_bf16_heads_and_a_fused_cross_entropy_with_the_triton_step():
    pair = engine_pair(8, dtype=torch.bfloat16)
    labels = torch.randint(0, 45, (11,), generator=torch.Generator().manual_seed(3))
    from taid_vlm.losses import EngineOptions, Head, divergence

    results = {}
    for kernel in ("triton", "torch"):
        h, w = pair[0].clone().requires_grad_(), pair[1].clone().requires_grad_()
        value = divergence("taid", Head(h, w), Head(pair[2], pair[3]), labels=labels, t=0.5,
                           options=EngineOptions(chunk_kernel=kernel, chunk_size=5, ce_weight=0.3))
        value.backward()
        results[kernel] = (value.detach(), h.grad.float(), w.grad.float())
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3)  # both fold bf16-rounded gradients


def test_engine_on_a_cached_top_k_teacher_with_the_triton_step():
    from taid_vlm.losses import EngineOptions, Head, divergence, topk_of_logits

    g = torch.Generator().manual_seed(9)
    h0, w0 = torch.randn(9, 8, generator=g), torch.randn(40, 8, generator=g)
    teacher = topk_of_logits(torch.randn(9, 40, generator=g) * 2, 6)
    out = {}
    for kernel in ("triton", "torch"):
        h = h0.clone().requires_grad_()
        value = divergence("fkl", Head(h, w0), teacher, options=EngineOptions(chunk_kernel=kernel, chunk_size=4))
        value.backward()
        out[kernel] = (value.detach(), h.grad)
    torch.testing.assert_close(out["triton"][0], out["torch"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["triton"][1], out["torch"][1], rtol=1e-5, atol=1e-6)


def test_the_triton_step_holds_no_temporaries_so_its_chunks_are_larger():
    from taid_vlm.losses import chunked
    from taid_vlm.losses.options import EngineOptions

    triton_kernel = chunked.kl_kernel(EngineOptions(chunk_kernel="triton"), "cpu")
    assert triton_kernel is interpolated_kl_triton_
    assert chunked.kl_kernel(EngineOptions(chunk_kernel="auto"), "cpu") is interpolated_kl_  # auto: never the interpreter
    assert chunked.kl_kernel(EngineOptions(chunk_kernel="auto"), "cuda", torch.float64) is interpolated_kl_
    step = chunked.FullVocabStep(None, None, kd_vocab=10, labels=None, interpolation=1.0, kernel=triton_kernel)
    torch_step = chunked.FullVocabStep(None, None, kd_vocab=10, labels=None, interpolation=1.0, kernel=interpolated_kl_)
    assert step.rows_per_token == chunked.ROWS_CLOSED_FORM_TRITON < torch_step.rows_per_token == chunked.ROWS_CLOSED_FORM
    with pytest.raises(ValueError, match="chunk_kernel must be one of torch, triton, auto"):
        EngineOptions(chunk_kernel="cuda")


def test_bf16_head_logits_come_out_of_the_gemm_in_fp32_on_cuda():
    """On CUDA (checked here on the meta device) the logits GEMM writes fp32, never bf16 first."""
    from taid_vlm.losses.signals import Scratch, fp32_output_gemm, linear_into

    x = torch.empty(4, 8, dtype=torch.bfloat16, device="meta")
    w = torch.empty(16, 8, dtype=torch.bfloat16, device="meta")
    out = torch.empty(4, 16, dtype=torch.float32, device="meta")
    assert fp32_output_gemm(x, w, out)
    linear_into(out, x, w, torch.empty(16, dtype=torch.bfloat16, device="meta"), Scratch(4, 16, torch.device("meta")))
    cpu = dict(dtype=torch.bfloat16)
    assert not fp32_output_gemm(torch.zeros(4, 8, **cpu), torch.zeros(16, 8, **cpu), torch.zeros(4, 16))  # none on CPU


def test_config_key_and_a_clear_error_on_cpu_without_the_interpreter(tmp_path, monkeypatch, capsys):
    from taid_vlm import cli
    from taid_vlm.train.config import ConfigError, load_config

    base = ["student=s", "teacher=t", "data=d", "output=o"]
    assert load_config(None, {}, base + ["chunk_kernel=torch"]).engine_options().chunk_kernel == "torch"
    assert load_config(None, {}, base).engine_options().chunk_kernel == "torch"  # not timed on a GPU yet
    with pytest.raises(ConfigError, match="chunk_kernel must be one of torch, triton, auto"):
        load_config(None, {}, base + ["chunk_kernel=cuda"])
    monkeypatch.setattr(triton_chunk, "interpreter_active", lambda: False)  # a user's plain CPU process
    code = cli.main(["distill", "--student", str(tmp_path / "s"), "--teacher", str(tmp_path / "t"), "--data",
                     str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "out"), "--chunk-kernel", "triton"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "taid-vlm distill: error: chunk_kernel=triton runs on CUDA devices; this run's logits are on cpu. Use chunk_kernel: "
        "torch or auto (TRITON_INTERPRET=1 in the environment of a fresh process runs the kernel in Triton's interpreter "
        "on CPU: for tests, far slower than torch)"]
    assert not (tmp_path / "out").exists()
