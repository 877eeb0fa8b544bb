"""The chunked fused-linear engine: any divergence from hidden states + LM head, never [N, V].

With 150k-260k vocabularies the full fp32 logits of a few thousand response tokens (and their
softmaxes and gradients) are the memory wall. The engine walks over the tokens in chunks:
for each chunk it computes the student's logits, hands them to the chunk's *step* (the loss and
its gradient w.r.t. those logits, right there in the forward pass), folds that gradient into
the gradients of the hidden states and of the head weight and throws the chunk away. Backward
only scales the stored gradients. Peak extra memory is the head's gradient plus a few
``[chunk, V]`` buffers, whatever N is.

One skeleton (``_Chunked``) serves every teacher; what differs is the step (``ChunkStep``):

- ``FullVocabStep`` (this file): the teacher's logits over the vocabulary (``Head``, ``Logits``),
  written into a reused buffer. For ``taid`` and ``fkl`` the step is one in-place pass kernel
  (``kl_kernel``: ``fused_kl.py``, or its ``torch.compile`` version) over the student's and the
  teacher's fp32 buffers; the other losses differentiate the chunk with autograd;
- ``BucketStep`` (``topk.py``): a teacher known by top-k + tail; the loss runs on the small
  ``[chunk, k + 1]`` bucket tensor and its gradient is chained back to the ``[chunk, V]`` logits.

Around the step the skeleton does the same for all: the student's final-logit ``softcap``
(applied in place, its derivative multiplied into the gradient), the student's cross entropy on
the labels with ``ce_weight`` (``(1 - ce_weight) * KD + ce_weight * CE``, one head matmul per
chunk, one head-gradient accumulator; both terms share the token denominator), the learned
temperature's gradient, and the fold through the head. A new per-chunk kernel (Triton, say)
is a new ``kl_kernel`` (same arguments: the chunk's student and teacher logits, t and the
temperature; it returns the per-token loss and leaves d loss / d student logits in the
student's buffer) or a new step, never a second skeleton: ``chunk_kernel: triton`` (the default
``auto`` on CUDA) is ``triton_chunk.py``'s, one launch per chunk with no temporaries.

The chunk size comes from a memory budget for those buffers (``chunk_memory_mb``), the same way
on every path and device (``chunk_size_for``): the GEMMs of a chunk run near full speed once a
chunk has ~100 tokens, so the budget buys speed up to a point and only memory after it (the
measured table is in docs/LOSS-ENGINE.md). Values and gradients agree with the plain path on
full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from .base import Loss
from .common import reduce_tokens, softcap_
from .fused_kl import compiled_interpolated_kl_, interpolated_kl_
from .options import EngineOptions
from .signals import FullSignal, Scratch, linear_into
from .triton_chunk import interpolated_kl_triton_, resolve_chunk_kernel

Tensor = torch.Tensor

# Budget (MiB) for a chunk's [chunk, V] buffers when neither chunk_size nor chunk_memory_mb is
# given. CPU: ~220-token chunks at V = 152k: TAID at 1.41x the four-GEMM floor with 13.6x less
# memory than the plain path; smaller chunks slow the GEMMs down (96 tokens: 1.66x, under load)
# (docs/LOSS-ENGINE.md). CUDA: ~1,750-token chunks at V = 152k (~3,500 with the Triton kernel's
# 2 rows a token), where GPU GEMMs are efficient;
# not measured here.
DEFAULT_CHUNK_MEMORY_MB = {"cpu": 512.0, "cuda": 4096.0}
MIN_CHUNK, MAX_CHUNK = 8, 8192

# fp32 [V] rows a step holds per token of a chunk (estimates, not measurements): the closed-form
# full-vocabulary step keeps the student and teacher buffers and the torch kernel's two
# temporaries (the Triton kernel has none: ROWS_CLOSED_FORM_TRITON);
# autograd keeps the graph's softmaxes, log-softmaxes and their gradients alive (8 for the zoo's
# losses); the bucket step keeps the student's buffer, the rest of its vocabulary and a
# logsumexp temporary.
ROWS_CLOSED_FORM, ROWS_AUTOGRAD, ROWS_BUCKETS = 4.0, 8.0, 3.0
ROWS_CLOSED_FORM_TRITON = 2.0
# A bf16/fp16 head adds a half-width matmul buffer; a fused cross entropy beside an in-place step
# its own softmax/gradient buffer (beside any other step it works in the logits' buffer once the
# step has read them); a softcapped student the buffer of the cap's derivative.
ROWS_LOW_PRECISION_EXTRA, ROWS_CE, ROWS_SOFTCAP = 0.5, 1.0, 1.0


def auto_chunk_size(
    vocab_size: int,
    chunk_memory_mb: float | None = None,
    *,
    device: torch.device | str = "cpu",
    rows_per_token: float = ROWS_CLOSED_FORM,
) -> int:
    """Tokens per chunk whose ``[chunk, V]`` buffers fit in ``chunk_memory_mb`` MiB.

    Without a budget the device's default (``DEFAULT_CHUNK_MEMORY_MB``) applies.
    """
    if chunk_memory_mb is None:
        chunk_memory_mb = DEFAULT_CHUNK_MEMORY_MB.get(torch.device(device).type, DEFAULT_CHUNK_MEMORY_MB["cpu"])
    if not chunk_memory_mb > 0:
        raise ValueError(f"chunk_memory_mb must be positive, got {chunk_memory_mb}")
    per_token = rows_per_token * 4 * max(vocab_size, 1)
    return max(MIN_CHUNK, min(MAX_CHUNK, int(chunk_memory_mb * 2**20 // per_token)))


def rows_per_token(step_rows: float, *, in_place: bool, ce: bool, low_precision: bool, softcap: bool) -> float:
    """fp32 ``[V]`` rows per token of a chunk: the step's own plus what the skeleton adds around it."""
    rows = step_rows + (ROWS_LOW_PRECISION_EXTRA if low_precision else 0.0)
    rows += ROWS_CE if ce and in_place else 0.0
    return rows + (ROWS_SOFTCAP if softcap else 0.0)


def chunk_size_for(step: "ChunkStep", vocab: int, options: EngineOptions, *, device: torch.device | str,
                   low_precision: bool = False, softcap: bool = False) -> int:
    """The chunk of one call: ``options.chunk_size``, else what fits ``options.chunk_memory_mb`` (or
    the default budget of ``device``) for this step, whatever the teacher."""
    if options.chunk_size is not None:
        return options.chunk_size
    rows = rows_per_token(step.rows_per_token, in_place=step.in_place, ce=bool(options.ce_weight),
                          low_precision=low_precision, softcap=softcap)
    return auto_chunk_size(vocab, options.chunk_memory_mb, device=device, rows_per_token=rows)


KLKernel = Callable[[Tensor, Tensor, float, float], Tensor]


def kl_kernel(options: EngineOptions, device: torch.device | str, dtype: torch.dtype = torch.float32) -> KLKernel:
    """The closed-form KL(p_t || q) kernel of a chunk (taid; fkl is t = 1) for logits of ``dtype``
    on ``device``, as ``options.chunk_kernel`` says (``triton_chunk.resolve_chunk_kernel``: an
    explicit ``triton`` where it cannot run is an error here, before any chunk).

    ``kernel(student [c, V], teacher [c, V], t, temperature) -> per-token loss [c]``; on return
    ``student`` holds d loss / d student logits (the torch kernel also uses ``teacher`` as scratch;
    the Triton kernel only reads it); both contiguous, one dtype.
    """
    if resolve_chunk_kernel(options.chunk_kernel, device, dtype) == "triton":
        return interpolated_kl_triton_
    return compiled_interpolated_kl_ if options.compile else interpolated_kl_


# ---- the per-chunk step -----------------------------------------------------------------------------


class ChunkStep:
    """One chunk's distillation term and its gradient w.r.t. the chunk's student logits.

    ``__call__(logits [c, V], start, end, temperature, want_t, need_grad)`` returns the chunk's
    summed loss, d loss / d logits ``[c, V]`` (None when no gradient is needed) and d loss /
    d temperature (None unless ``want_t``). ``logits`` are fp32 (or wider) and already capped; an
    ``in_place`` step consumes them and returns its gradient in their storage, any other step
    leaves them as they were until it returns.
    """

    in_place: ClassVar[bool] = False
    rows_per_token: float = ROWS_AUTOGRAD
    kd_vocab: int  # the student logits' columns the term compares (the rest get zero gradient)
    dtype: torch.dtype  # the teacher side's math dtype (fp32, or fp64)

    def prepare(self, rows: int, dtype: torch.dtype, device: torch.device, scratch: Scratch) -> None:
        """Allocate reused buffers for chunks of up to ``rows`` tokens."""

    def __call__(self, logits: Tensor, start: int, end: int, temperature: float | Tensor | None, want_t: bool,
                 need_grad: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        raise NotImplementedError


def autograd_step(loss: Loss, student: Tensor, teacher: Tensor, labels: Tensor | None, temperature: float | Tensor,
                  want_t: bool, need_grad: bool, columns: int | None = None
                  ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Any loss on one chunk, differentiated with autograd w.r.t. ``student`` (and the temperature);
    ``columns``: the loss sees only the first ones (a student head with padding rows)."""
    with torch.enable_grad():
        leaf = student.detach().requires_grad_(need_grad)
        t_leaf = temperature.detach().requires_grad_(want_t) if isinstance(temperature, Tensor) else temperature
        seen = leaf if columns is None or columns == leaf.shape[1] else leaf[:, :columns]
        kd = loss.per_token(seen, teacher, temperature=t_leaf, labels=labels).sum()
        if not (need_grad or want_t):
            return kd.detach(), None, None
        if not kd.requires_grad:
            return kd.detach(), torch.zeros_like(leaf), torch.zeros_like(t_leaf) if want_t else None
        inputs = ([leaf] if need_grad else []) + ([t_leaf] if want_t else [])
        grads = list(torch.autograd.grad(kd, inputs))
    grad = grads.pop(0) if need_grad else None
    return kd.detach(), grad, grads[0] if want_t else None


class FullVocabStep(ChunkStep):
    """The teacher's logits over the vocabulary, into a reused buffer; the closed-form kernel for
    taid/fkl (``interpolation`` = t), autograd for any other loss."""

    def __init__(self, teacher: FullSignal | None, loss: Loss, *, kd_vocab: int, labels: Tensor | None,
                 interpolation: float | None, kernel: KLKernel):
        self.teacher, self.loss, self.kd_vocab, self.labels = teacher, loss, kd_vocab, labels
        self.interpolation, self.kernel = interpolation, kernel
        self.in_place = interpolation is not None
        closed_form = ROWS_CLOSED_FORM_TRITON if kernel is interpolated_kl_triton_ else ROWS_CLOSED_FORM
        self.rows_per_token = closed_form if self.in_place else ROWS_AUTOGRAD
        self.dtype = teacher.dtype if teacher is not None else torch.float32  # None: a teacher-free loss (sft)

    def prepare(self, rows, dtype, device, scratch) -> None:
        self.buffer = torch.empty(rows, self.kd_vocab, dtype=dtype, device=device) if self.teacher is not None else None
        self.scratch = scratch

    def __call__(self, logits, start, end, temperature, want_t, need_grad):
        target = None
        if self.teacher is not None:
            target = self.buffer[: end - start]
            self.teacher.chunk_into(target, start, end, self.scratch)
        if self.in_place:
            per_token = self.kernel(logits, target, self.interpolation, temperature)
            return per_token.sum(), logits, None  # the kernel left d(loss)/d(logits) in the student's buffer
        labels = self.labels[start:end] if self.labels is not None else None
        return autograd_step(self.loss, logits, target, labels, temperature, want_t, need_grad, columns=self.kd_vocab)


# ---- the skeleton -------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What one call of the skeleton computes, besides its tensor inputs."""

    step: ChunkStep
    temperature: float | None  # a plain temperature; a learned one is the Function's input
    vocab: int  # the head rows the student's logits are computed for
    chunk_size: int
    num_tokens: float | Tensor | None
    ce_weight: float = 0.0  # weight of the fused cross entropy; 0: none
    ce_labels: Tensor | None = None  # token ids (the whole head) for the fused cross entropy
    softcap: float | None = None  # the student's final-logit softcapping
    dtype: torch.dtype = torch.float32  # the math dtype of the student's chunk logits
    terms: tuple[Tensor, Tensor] | None = None  # (kd, ce) reduced like the loss, set by forward


def run(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: Tensor | None, plan: Plan) -> Tensor:
    """The chunked loss of ``plan`` over the student's ``hidden [N, H]`` and head ``weight [V, H]``."""
    return _Chunked.apply(hidden, weight, bias, temperature, plan)


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: Tensor | None, plan: Plan):
        vocab = plan.vocab
        w = weight[:vocab]
        b = bias[:vocab] if bias is not None else None
        want_h, want_w, want_b, want_t = ctx.needs_input_grad[:4]
        need_grad = want_h or want_w or want_b
        acc = torch.promote_types(hidden.dtype, torch.float32)  # accumulate in >= fp32
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if want_w else None
        grad_b = torch.zeros(vocab, dtype=acc, device=w.device) if want_b else None
        grad_t = torch.zeros((), dtype=acc, device=hidden.device) if want_t else None
        # Low-precision heads: the chunk's [V, H] product lands in one reused buffer, then is
        # added to the fp32 accumulator; never a fresh [V, H] temporary per chunk.
        product_buffer = torch.empty_like(w) if want_w and w.dtype != acc else None

        n, step, device = hidden.shape[0], plan.step, hidden.device
        rows = max(1, min(plan.chunk_size, n))
        student_buf = torch.empty(rows, vocab, dtype=plan.dtype, device=device)
        ce_buf = torch.empty(rows, vocab, dtype=plan.dtype, device=device) if plan.ce_weight and step.in_place else None
        cap_buf = torch.empty(rows, vocab, dtype=plan.dtype, device=device) if plan.softcap is not None else None
        scratch = Scratch(rows, vocab, device)
        step.prepare(rows, plan.dtype, device, scratch)
        t = temperature if temperature is not None else plan.temperature
        kd_weight = 1.0 - plan.ce_weight
        total = torch.zeros(2, dtype=plan.dtype, device=device)  # sums of the kd and ce terms
        with torch.no_grad():
            for start in range(0, n, rows):
                end = min(start + rows, n)
                h_chunk, logits = hidden[start:end], student_buf[: end - start]
                linear_into(logits, h_chunk, w, b, scratch)
                derivative = cap_buf[: end - start] if cap_buf is not None else None
                if plan.softcap is not None:
                    softcap_(logits, plan.softcap, derivative)
                ce_grad = None
                if ce_buf is not None:  # read the logits before the step consumes them
                    ce_grad = ce_buf[: end - start]
                    total[1] += cross_entropy_into(ce_grad, logits, plan.ce_labels[start:end])
                kd, grad, grad_t_chunk = step(logits, start, end, t, want_t, need_grad)
                total[0] += kd
                if plan.ce_weight and ce_buf is None:  # the step is done with the logits: CE in their buffer
                    total[1] += cross_entropy_into(logits, logits, plan.ce_labels[start:end])
                    ce_grad = logits
                if grad_t_chunk is not None:
                    grad_t += grad_t_chunk * kd_weight if plan.ce_weight else grad_t_chunk
                if grad is None:
                    continue
                if ce_grad is not None:
                    grad.mul_(kd_weight).add_(ce_grad, alpha=plan.ce_weight)
                if derivative is not None:
                    grad.mul_(derivative)
                if grad_b is not None:
                    grad_b += grad.sum(0)
                if grad.dtype != h_chunk.dtype:
                    grad = scratch.get(h_chunk.dtype, end - start).copy_(grad)
                _fold_chunk_gradient(grad, h_chunk, w, start, end, grad_h, grad_w, product_buffer)

        kd, ce = (reduce_tokens(term, plan.num_tokens, n) for term in total)
        plan.terms = (kd, ce)
        loss = kd if plan.ce_weight == 0 else kd_weight * kd + plan.ce_weight * ce
        scale = reduce_tokens(torch.ones_like(total[0]), plan.num_tokens, n)  # 1 / denominator
        # Kept as attributes, scaled in place: a [V, H] head gradient is the biggest tensor
        # here, and neither a scaled copy nor a second reference may outlive backward.
        ctx.grads = [g.mul_(scale) if g is not None else None for g in (grad_h, grad_w, grad_b, grad_t)]
        ctx.weight_rows, ctx.weight_dtype = weight.shape[0], weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if ctx.grads is None:
            raise RuntimeError(
                "chunked engine: backward ran twice on one loss. Its gradients are computed in the "
                "forward pass and handed over once (holding them for a second pass would double "
                "the head-gradient memory); recompute the loss instead of retain_graph=True."
            )
        grad_h, grad_w, grad_b, grad_t = ctx.grads
        ctx.grads = None
        if grad_h is not None:
            grad_h = grad_h.mul_(grad_output.to(grad_h.dtype))
        if grad_w is not None:
            grad_w = _pad_rows(grad_w.mul_(grad_output), ctx.weight_rows).to(ctx.weight_dtype)
        if grad_b is not None:
            grad_b = _pad_rows(grad_b.mul_(grad_output), ctx.weight_rows).to(ctx.bias_dtype)
        if grad_t is not None:
            grad_t = grad_t * grad_output
        return grad_h, grad_w, grad_b, grad_t, None


def cross_entropy_into(out: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """Sum of the chunk's cross entropy; ``out`` receives its logits gradient softmax(z) - onehot.

    Labels below 0 (ignored positions) give 0 loss and a zero gradient row, as in ``cross_entropy``.
    """
    valid = labels >= 0
    safe = labels.clamp_min(0).unsqueeze(-1)
    label_logits = logits.gather(-1, safe).squeeze(-1)  # first: ``out`` may be ``logits`` itself
    if out.data_ptr() != logits.data_ptr():
        out.copy_(logits)
    top = out.amax(-1, keepdim=True)
    out.sub_(top).exp_()
    sums = out.sum(-1, keepdim=True)
    out.div_(sums)
    per_token = (top + sums.log()).squeeze(-1) - label_logits
    out.scatter_add_(-1, safe, torch.full_like(safe, -1, dtype=out.dtype))
    if not bool(valid.all()):
        out.mul_(valid.unsqueeze(-1).to(out.dtype))
    return torch.where(valid, per_token, torch.zeros_like(per_token)).sum()


def _fold_chunk_gradient(grad_logits, h_chunk, w, start, end, grad_h, grad_w, product_buffer) -> None:
    """Chain rule through the head for one chunk: dL/dh = g @ W, dL/dW += g.T @ h."""
    if grad_h is not None:
        torch.mm(grad_logits, w, out=grad_h[start:end])
    if grad_w is not None:
        _accumulate_outer(grad_w, grad_logits, h_chunk, product_buffer)


def _accumulate_outer(acc: Tensor, grad_logits: Tensor, h_chunk: Tensor, buffer: Tensor | None) -> None:
    """acc += grad_logits.T @ h_chunk, in place."""
    if buffer is None:
        acc.addmm_(grad_logits.t().to(acc.dtype), h_chunk.to(acc.dtype))
    else:
        torch.mm(grad_logits.t(), h_chunk, out=buffer)
        acc.add_(buffer)


def _pad_rows(grad: Tensor, rows: int) -> Tensor:
    """Gradient for head rows beyond the shared vocabulary (padding rows) is zero."""
    if grad.shape[0] == rows:
        return grad
    pad = torch.zeros((rows - grad.shape[0],) + tuple(grad.shape[1:]), dtype=grad.dtype, device=grad.device)
    return torch.cat([grad, pad])


def require_2d(tensor: Any, what: str) -> None:
    if isinstance(tensor, Tensor) and tensor.dim() != 2:
        raise ValueError(
            f"chunked engine: {what} must be 2-D [tokens, features], got shape {tuple(tensor.shape)}; "
            f"flatten it first (x.reshape(-1, x.shape[-1]) and the mask with mask.reshape(-1)) — "
            "a 3-D input would otherwise silently defeat chunking"
        )
