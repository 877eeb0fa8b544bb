"""KL(p_t || q) and its logits gradient for a chunk of tokens in one Triton kernel (taid, fkl).

The same function as ``fused_kl.interpolated_kl_`` (the torch path, the ground truth of the
semantics): per token ``KL(p_t || q) * T**2`` with ``q = softmax(s/T)`` and TAID's target
``p_t = softmax(t * max(u/T, NEG_LARGE) + (1 - t) * max(s/T, NEG_LARGE))`` (``t = 1``: forward
KL, the student left unclamped), and the gradient ``T * (q - p_t)`` w.r.t. the student's logits.

One launch, one program per token (row), two sweeps over the row's vocabulary in blocks:

1. online softmax: running maxima and normalisers of ``s/T`` (for q) and of the target z (for
   p_t), and the running ``sum exp(z - m_p) ((z - m_p) - (s/T - m_q))``, moved along whenever a
   maximum moves. The loss is complete after this sweep: that sum over ``l_p``, ``- log l_p +
   log l_q``.
2. the gradient ``T * (exp(s/T - m_q) / l_q - exp(z - m_p) / l_p)``, written block by block.

Why two sweeps and not one: the gradient needs the row's final normalisers, which a single
sweep only knows at its end; writing unnormalised values and rescaling them afterwards would be
a second sweep over the output anyway. So the kernel reads the two logit rows twice and writes
the gradient once; it holds nothing of size ``[chunk, V]`` beyond its inputs and the gradient
output, which may be the student's buffer itself (the default, as in the torch path). The
teacher's buffer is only read. All arithmetic is fp32 whatever the inputs (fp32, bf16 or fp16):
bf16 logits are upcast element by element as they are loaded, and the gradient is rounded once,
when it is stored, to the dtype of its output.

The GEMMs around it (logits, and folding the gradient through the head) stay in torch.

Where it runs: on CUDA tensors, compiled by Triton. On CPU tensors only in Triton's interpreter,
and only when asked: ``TRITON_INTERPRET=1`` in the environment of the process (the test suite
sets it). The interpreter is for correctness tests and is orders of magnitude slower than the
torch path, so it is never chosen silently.
"""

from __future__ import annotations

import torch

from .fused_kl import NEG_LARGE

try:
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - no (or a broken) Triton: only the torch path exists
    triton = tl = None

Tensor = torch.Tensor

CHUNK_KERNELS = ("torch", "triton", "auto")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Vocabulary entries per block of a sweep on a GPU (a power of two); tests use small blocks so
# that ragged vocabularies span several blocks.
DEFAULT_BLOCK = 4096


def triton_importable() -> bool:
    return tl is not None


def interpreter_active() -> bool:
    """Triton was imported with ``TRITON_INTERPRET=1``: its kernels run in its interpreter (CPU tensors).

    Triton decides this once per process, when it is imported (its own library functions are
    built for one mode), so the variable must be set before the program starts.
    """
    if tl is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.zeros, InterpretedFunction)


def resolve_chunk_kernel(setting: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """``torch`` or ``triton``: which per-chunk kernel ``setting`` (torch|triton|auto) means here.

    ``auto`` is triton on a CUDA device where Triton imports and the dtype is one it handles,
    else torch. ``triton`` where it cannot run is an error, never a silent fallback: on CPU it
    runs only in Triton's interpreter, and only when ``TRITON_INTERPRET=1`` asks for it.
    """
    if setting not in CHUNK_KERNELS:
        raise ValueError(f"chunk_kernel must be one of {CHUNK_KERNELS}, got {setting!r}")
    device = torch.device(device)
    if setting == "torch":
        return "torch"
    if setting == "auto":
        usable = device.type == "cuda" and dtype in SUPPORTED_DTYPES and triton_importable()
        return "triton" if usable else "torch"
    if not triton_importable():
        raise ValueError("chunk_kernel=triton needs the triton package (it ships with CUDA builds of torch); "
                         "use chunk_kernel: torch or auto")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"chunk_kernel=triton handles {', '.join(str(d).replace('torch.', '') for d in SUPPORTED_DTYPES)} "
                         f"logits, not {str(dtype).replace('torch.', '')}; use chunk_kernel: torch or auto")
    if device.type != "cuda" and not interpreter_active():
        raise ValueError(f"chunk_kernel=triton runs on CUDA devices; this run's logits are on {device.type}. "
                         "Use chunk_kernel: torch or auto (TRITON_INTERPRET=1 in the environment of a fresh "
                         "process runs the kernel in Triton's interpreter on CPU: for tests, far slower than torch)")
    return "triton"


def interpolated_kl_triton_(
    student: Tensor,
    teacher: Tensor,
    t: float = 1.0,
    temperature: float = 1.0,
    *,
    grad_out: Tensor | None = None,
    block: int | None = None,
) -> Tensor:
    """Per-token ``KL(p_t || q) * temperature**2`` (fp32); the gradient goes to ``grad_out``.

    ``student`` and ``teacher`` are ``[n, V]`` logits (fp32, bf16 or fp16; rows contiguous).
    ``grad_out`` (default: ``student`` itself, overwritten as in ``interpolated_kl_``) receives
    ``temperature * (q - p_t)``, in its own dtype. ``teacher`` is not modified. The tensors must
    be on a CUDA device, or on CPU in a process that runs Triton's interpreter
    (``interpreter_active``). ``block``: vocabulary entries per block (a power of two).
    """
    if tl is None:
        raise ValueError("interpolated_kl_triton_ needs the triton package (it ships with CUDA builds of torch)")
    _check(student, teacher)
    if grad_out is None:
        grad_out = student
    if grad_out.shape != student.shape or grad_out.dtype not in SUPPORTED_DTYPES or grad_out.stride(-1) != 1:
        raise ValueError(f"interpolated_kl_triton_: grad_out {tuple(grad_out.shape)} {grad_out.dtype} must be an "
                         f"[n, V] float tensor of the student's shape {tuple(student.shape)} with contiguous rows")
    if not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"interpolated_kl_triton_: t must lie in [0, 1], got {t}")
    if not float(temperature) > 0:
        raise ValueError(f"interpolated_kl_triton_: temperature must be positive, got {temperature}")
    interpret = interpreter_active()
    if interpret != _built_interpreted():
        raise ValueError("interpolated_kl_triton_: TRITON_INTERPRET changed after Triton was imported; set it "
                         "before the process starts")
    if student.device.type != "cuda" and not interpret:
        raise ValueError(f"interpolated_kl_triton_: tensors on {student.device.type}; the compiled kernel needs CUDA "
                         "(TRITON_INTERPRET=1 set before the process starts runs Triton's interpreter on CPU)")
    n, vocab = student.shape
    per_token = torch.empty(n, dtype=torch.float32, device=student.device)
    if n == 0:
        return per_token
    block = block or min(DEFAULT_BLOCK, triton.next_power_of_2(vocab))
    if block & (block - 1):
        raise ValueError(f"interpolated_kl_triton_: block must be a power of two, got {block}")
    _interpolated_kl_rows[(n,)](
        student, teacher, grad_out, per_token,
        student.stride(0), teacher.stride(0), grad_out.stride(0), vocab,
        1.0 - float(t), float(temperature), float(NEG_LARGE),
        INTERPOLATE=float(t) < 1.0, BLOCK=block,
        **({} if interpret else {"num_warps": 8 if block >= 2048 else 4}),
    )  # fmt: skip
    return per_token


def _built_interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_interpolated_kl_rows, InterpretedFunction)


def _check(student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"interpolated_kl_triton_: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         "must be [n, V] tensors of one shape")
    for name, x in (("student", student), ("teacher", teacher)):
        if x.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"interpolated_kl_triton_: {name} is {x.dtype}; the kernel takes fp32, bf16 or fp16")
        if x.stride(-1) != 1:
            raise ValueError(f"interpolated_kl_triton_: {name}'s rows must be contiguous (stride 1 along V)")
    if student.device != teacher.device:
        raise ValueError(f"interpolated_kl_triton_: student on {student.device}, teacher on {teacher.device}")


def _jit(**options):
    """triton.jit where Triton imports (compiled or interpreted, as TRITON_INTERPRET said when it
    was imported); the plain function where it does not (never called then)."""
    return (lambda fn: triton.jit(fn, **options)) if triton is not None else (lambda fn: fn)


@_jit()
def _target(s, u, w, neg_large, INTERPOLATE: tl.constexpr):
    """TAID's target logits: torch.lerp(max(u, NEG_LARGE), s, w), w = 1 - t (s already clamped).

    lerp's two forms, as torch computes them: a + w (b - a) for w < 0.5, else b - (b - a)(1 - w)
    (exact at w = 1: with a = NEG_LARGE, a + (b - a) would cancel b away).
    """
    z = tl.maximum(u, neg_large)
    if INTERPOLATE:
        z = tl.where(w < 0.5, z + w * (s - z), s - (s - z) * (1.0 - w))
    return z


@_jit()
def _interpolated_kl_rows(
    s_ptr, u_ptr, g_ptr, loss_ptr, s_stride, u_stride, g_stride, vocab, w, temperature, neg_large,
    INTERPOLATE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One program per row: the loss after sweep 1, the gradient in sweep 2."""
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    u_row = u_ptr + row * u_stride
    g_row = g_ptr + row * g_stride
    cols = tl.arange(0, BLOCK)

    # Sweep 1: online softmax of s/T (q) and of the target z (p_t), and
    # a = sum_v exp(z - m_p) ((z - m_p) - (s - m_q)), all relative to the running maxima (as the
    # torch path subtracts the maxima before it multiplies: no cancellation of large logits).
    # The maxima start at a finite floor, not -inf: exp(m_old - m_new) is never exp(-inf + inf).
    m_q = tl.full((), -3.0e38, tl.float32)
    l_q = tl.zeros((), tl.float32)
    m_p = tl.full((), -3.0e38, tl.float32)
    l_p = tl.zeros((), tl.float32)
    a = tl.zeros((), tl.float32)
    for start in range(0, vocab, BLOCK):
        idx = start + cols
        inside = idx < vocab
        s = tl.load(s_row + idx, mask=inside, other=float("-inf")).to(tl.float32) / temperature
        u = tl.load(u_row + idx, mask=inside, other=float("-inf")).to(tl.float32) / temperature
        if INTERPOLATE:  # as the torch path: a masked (-inf) student entry has p_t = 0 for t < 1
            s = tl.where(inside, tl.maximum(s, neg_large), float("-inf"))
        z = tl.where(inside, _target(s, u, w, neg_large, INTERPOLATE), float("-inf"))
        m_q_new = tl.maximum(m_q, tl.max(s, axis=0))
        m_p_new = tl.maximum(m_p, tl.max(z, axis=0))
        scale = tl.exp(m_p - m_p_new)
        # The old terms move with the maxima; where their weight underflows to 0 they are 0, as the
        # torch path's p = 0 there (even where a term was inf: a masked student under a masked teacher).
        a = tl.where(scale > 0, scale * (a + l_p * ((m_q_new - m_q) - (m_p_new - m_p))), 0.0)
        e = tl.exp(z - m_p_new)
        # 0 * inf where p_t is 0 and the student is -inf: 0 log 0 = 0, as in the torch path.
        a += tl.sum(tl.where(e > 0, e * ((z - m_p_new) - (s - m_q_new)), 0.0), axis=0)
        l_p = l_p * scale + tl.sum(e, axis=0)
        l_q = l_q * tl.exp(m_q - m_q_new) + tl.sum(tl.exp(s - m_q_new), axis=0)
        m_q = m_q_new
        m_p = m_p_new
    loss = a / l_p - tl.log(l_p) + tl.log(l_q)
    tl.store(loss_ptr + row, loss * temperature * temperature)

    # Sweep 2: the gradient T * (q - p_t), written in the output's dtype (the inputs may be that buffer).
    for start in range(0, vocab, BLOCK):
        idx = start + cols
        inside = idx < vocab
        s = tl.load(s_row + idx, mask=inside, other=float("-inf")).to(tl.float32) / temperature
        u = tl.load(u_row + idx, mask=inside, other=float("-inf")).to(tl.float32) / temperature
        if INTERPOLATE:
            s = tl.maximum(s, neg_large)
        z = _target(s, u, w, neg_large, INTERPOLATE)
        grad = (tl.exp(s - m_q) / l_q - tl.exp(z - m_p) / l_p) * temperature
        tl.store(g_row + idx, grad.to(g_ptr.dtype.element_ty), mask=inside)
