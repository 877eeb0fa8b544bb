"""KL(p_t || q) and its logits gradient for a block of tokens, in place, in few passes over V.

The chunked engine spends its non-GEMM time here: per token, two softmaxes over the whole
vocabulary, the interpolation of TAID's target and the closed-form gradient
``temperature * (q - p_t)``. Done naively that is ~20 passes over ``[n, V]`` fp32 and as many
freshly allocated temporaries. Here the student's logits buffer becomes the gradient, the
teacher's buffer is the scratch space, and only two exponentials per element are computed (q and
p are rescaled exponentials, never recomputed from log-probabilities).

Besides the two buffers it is given, the kernel holds two [n, V] temporaries (exp of the
student's logits, p). ``interpolated_kl_`` is the eager kernel; ``compiled_interpolated_kl_`` hands the same math to
``torch.compile`` (one generated loop nest per row instead of a dozen library calls) and falls
back to the eager kernel when compilation is unavailable.
"""

from __future__ import annotations

import functools
import shutil
import warnings

import torch

Tensor = torch.Tensor

# Stand-in for -inf logits (masked vocabulary entries): interpolating -inf with -inf is NaN.
NEG_LARGE = torch.finfo(torch.float32).min / 4

# Rows per call of the eager kernel's library ops (None: the whole chunk at once). Smaller
# blocks keep the two [rows, V] temporaries in cache, but each op is an OpenMP region: on the
# shared 2-core machine (load 12-16) the whole 128-token chunk took 1.8 s where 16-row blocks
# took 3.1 s and 32-row blocks 3.8 s (same process, medians of 3).
EAGER_BLOCK_ROWS: int | None = None


def interpolated_kl_(
    student: Tensor, teacher: Tensor, t: float = 1.0, temperature: float = 1.0, block_rows: int | None = EAGER_BLOCK_ROWS
) -> Tensor:
    """Per-token ``KL(p_t || q) * temperature**2``; ``student`` is overwritten with the gradient.

    ``p_t = softmax(t * teacher/T + (1 - t) * student/T)`` (TAID; ``t = 1`` is forward KL) and
    ``q = softmax(student/T)``. On return ``student`` holds ``temperature * (q - p_t)``, the
    gradient of the per-token loss w.r.t. the student's logits; ``teacher`` holds scratch.
    Both must be contiguous ``[n, V]`` floating tensors of one dtype (fp32 or fp64).
    """
    _check_buffers(student, teacher)
    per_token = torch.empty(student.shape[0], dtype=student.dtype, device=student.device)
    rows = max(1, block_rows) if block_rows and student.device.type == "cpu" else max(1, student.shape[0])
    for start in range(0, student.shape[0], rows):
        end = start + rows
        _kl_block_(student[start:end], teacher[start:end], per_token[start:end], float(t), float(temperature))
    return per_token


def _kl_block_(s: Tensor, u: Tensor, out: Tensor, t: float, temperature: float) -> None:
    if temperature != 1.0:
        s.div_(temperature)
        u.div_(temperature)
    u.clamp_min_(NEG_LARGE)
    if t < 1.0:
        # A student -inf (a masked entry) gets p_t = 0 there for any t < 1, so clamping it in
        # place changes nothing in the result; at t = 1 the student is left untouched.
        s.clamp_min_(NEG_LARGE)
        u.lerp_(s, 1.0 - t)  # t * teacher + (1 - t) * student
    s.sub_(s.amax(-1, keepdim=True))
    e_s = s.exp()
    sum_s = e_s.sum(-1, keepdim=True)
    u.sub_(u.amax(-1, keepdim=True))
    p = u.exp()
    sum_p = p.sum(-1, keepdim=True)
    p.div_(sum_p)
    # log p - log q = (u - s) - log(sum_p) + log(sum_s); the constant is added once per row.
    shift = (sum_s.log() - sum_p.log()).squeeze(-1)
    diff = u.sub_(s)
    torch.linalg.vecdot(p, diff, out=out)
    bad = torch.isnan(out)
    if bad.any():
        # 0 * inf: the student put -inf where the teacher has no mass; 0 log 0 = 0 there.
        rows = bad.nonzero().squeeze(-1)
        out[rows] = torch.where(p[rows] > 0, p[rows] * diff[rows], torch.zeros_like(p[rows])).sum(-1)
    out.add_(shift)
    torch.div(e_s, sum_s, out=s)
    s.sub_(p)
    if temperature != 1.0:
        out.mul_(temperature**2)
        s.mul_(temperature)


def _check_buffers(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape or student.dtype != teacher.dtype or student.dim() != 2:
        raise ValueError(
            f"interpolated_kl_: student {tuple(student.shape)} {student.dtype} and teacher "
            f"{tuple(teacher.shape)} {teacher.dtype} must be [n, V] tensors of one shape and dtype"
        )
    if not (student.is_contiguous() and teacher.is_contiguous()):
        raise ValueError("interpolated_kl_: student and teacher must be contiguous (they are written in place)")


def _kl_rows(s: Tensor, u: Tensor, t: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor]:
    """The same math, out of place, for torch.compile to fuse (it handles the in-place copy)."""
    s = s / temperature
    u = u.clamp_min(NEG_LARGE) / temperature
    s_target = torch.where(t < 1.0, s.clamp_min(NEG_LARGE), s)
    target = u + (1.0 - t) * (s_target - u)
    log_q = torch.log_softmax(s, dim=-1)
    log_p = torch.log_softmax(target, dim=-1)
    p = log_p.exp()
    per_token = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1) * temperature**2
    grad = (log_q.exp() - p) * temperature
    return per_token, grad


def _compile_step(s: Tensor, u: Tensor, t: Tensor, temperature: Tensor) -> Tensor:
    per_token, grad = _kl_rows(s, u, t, temperature)
    s.copy_(grad)
    return per_token


def compiler_available(device: torch.device | str = "cpu") -> bool:
    """Inductor needs a C++ compiler for CPU kernels (and Triton for CUDA ones)."""
    if not hasattr(torch, "compile"):
        return False
    if torch.device(device).type == "cpu":
        return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _compiled():
    # dynamic=True: one compiled kernel serves every chunk length (the last chunk is shorter).
    return torch.compile(_compile_step, dynamic=True, fullgraph=True)


_COMPILE_FAILED: set[str] = set()


def compiled_interpolated_kl_(student: Tensor, teacher: Tensor, t: float = 1.0, temperature: float = 1.0) -> Tensor:
    """``interpolated_kl_`` through ``torch.compile``; the eager kernel if compiling fails."""
    _check_buffers(student, teacher)
    device = student.device.type
    if device not in _COMPILE_FAILED and compiler_available(student.device):
        try:
            scalars = dict(dtype=student.dtype, device=student.device)
            return _compiled()(student, teacher, torch.tensor(float(t), **scalars), torch.tensor(float(temperature), **scalars))
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
            _COMPILE_FAILED.add(device)
            warnings.warn(f"chunked engine: torch.compile failed on {device} ({type(exc).__name__}: {exc}); "
                          "using the eager kernel from now on", RuntimeWarning, stacklevel=2)
    return interpolated_kl_(student, teacher, t, temperature)
