"""The chunked fused-linear engine: any divergence from hidden states + LM head, never [N, V].

With 150k-260k vocabularies the full fp32 logits of a few thousand response tokens (and their
softmaxes and gradients) are the memory wall. The engine walks over the tokens in chunks:
for each chunk it computes the student's (and the teacher's) logits, the per-token divergence,
and, right there in the forward pass, the gradient w.r.t. that chunk's logits; it then folds
that gradient into the gradients of the hidden states and of the head weight and throws the
chunk away. Backward only scales the stored gradients. Peak extra memory is the head's gradient
plus a few ``[chunk, V]`` buffers, whatever N is.

With ``ce_weight`` the student's cross entropy on the labels rides along in the same pass:
``(1 - ce_weight) * KD + ce_weight * CE``, one head matmul per chunk, one gradient per chunk
folded once into one head-gradient accumulator (two separate calls compute the logits twice and
hold two fp32 ``[V, H]`` head gradients until backward). Both terms share the token denominator.

The chunk size comes from a memory budget for those buffers (``chunk_memory_mb``): the GEMMs
of a chunk run near full speed once a chunk has ~100 tokens, so the budget buys speed up to a
point and only memory after it (the measured table is in the README). For ``taid`` and ``fkl``
a chunk costs the four GEMMs no fused loss avoids plus one in-place pass kernel
(``fused_kl.py``) over two preallocated fp32 buffers; the other losses differentiate each
chunk with autograd. Values and gradients agree with ``divergence()`` on full logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .api import reduce_tokens, upcast
from .base import Loss
from .fused_kl import compiled_interpolated_kl_, interpolated_kl_
from .registry import build_loss
from .vocab import shared_vocab_size

Tensor = torch.Tensor

# Budget (MiB) for a chunk's [chunk, V] buffers when neither chunk_size nor chunk_memory_mb is
# given. CPU: ~220-token chunks at V = 152k: TAID at 1.41x the four-GEMM floor with 13.6x less
# memory than the plain path; smaller chunks slow the GEMMs down (96 tokens: 1.66x, under load)
# (docs/LOSS-ENGINE.md, README "Speed and memory of the loss"). CUDA: ~1,750-token
# chunks at V = 152k, where GPU GEMMs are efficient; not measured here.
DEFAULT_CHUNK_MEMORY_MB = {"cpu": 512.0, "cuda": 4096.0}
MIN_CHUNK, MAX_CHUNK = 8, 8192

# fp32 [V] rows the engine holds per token of a chunk: the closed-form path keeps the student
# and teacher buffers and the kernel's two temporaries (+ a half-width one for a bf16/fp16
# head); autograd keeps the graph's softmaxes, log-softmaxes and their gradients alive (8 is an
# estimate for the zoo's losses, not a measurement).
_ROWS_CLOSED_FORM, _ROWS_LOW_PRECISION_EXTRA, _ROWS_AUTOGRAD = 4.0, 0.5, 8.0
# A fused cross entropy adds its softmax/gradient buffer (closed form) or a few graph rows (autograd).
_ROWS_CE_CLOSED_FORM, _ROWS_CE_AUTOGRAD = 1.0, 2.0


def auto_chunk_size(
    vocab_size: int,
    chunk_memory_mb: float | None = None,
    *,
    device: torch.device | str = "cpu",
    rows_per_token: float = _ROWS_CLOSED_FORM,
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


@dataclass
class _TeacherSignal:
    """The teacher for the selected tokens: logits, or hidden states + head (computed per chunk)."""

    logits: Tensor | None
    hidden: Tensor | None
    weight: Tensor | None
    bias: Tensor | None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of its logits after upcasting (fp32, or fp64 for fp64 inputs)."""
        source = self.logits if self.logits is not None else self.weight
        return torch.promote_types(source.dtype, torch.float32)

    def chunk(self, start: int, end: int, vocab: int) -> Tensor:
        """A fresh fp32 (or wider) tensor: callers may modify it in place."""
        with torch.no_grad():
            if self.logits is not None:
                rows = self.logits[start:end, :vocab]
                return rows.to(torch.promote_types(rows.dtype, torch.float32), copy=True)
            out = self.hidden[start:end] @ self.weight[:vocab].t()
            if self.bias is not None:
                out = out + self.bias[:vocab]
            return upcast(out)

    def chunk_into(self, out: Tensor, start: int, end: int, scratch: "_Scratch") -> None:
        """The teacher's logits for tokens [start, end) written into ``out`` [end - start, V]."""
        vocab = out.shape[1]
        if self.logits is not None:
            out.copy_(self.logits[start:end, :vocab])
            return
        b = self.bias[:vocab] if self.bias is not None else None
        _linear_into(out, self.hidden[start:end], self.weight[:vocab], b, scratch)


class _Scratch:
    """Reused head-dtype buffers for bf16/fp16 matmuls whose result lands in an fp32 buffer."""

    def __init__(self, rows: int, cols: int, device: torch.device):
        self.rows, self.cols, self.device, self.buffers = rows, cols, device, {}

    def get(self, dtype: torch.dtype, rows: int) -> Tensor:
        if dtype not in self.buffers:
            self.buffers[dtype] = torch.empty(self.rows, self.cols, dtype=dtype, device=self.device)
        return self.buffers[dtype][:rows]


def _linear_into(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, scratch: _Scratch) -> None:
    """out = x @ weight.T + bias, the matmul in the head's dtype, the result in out's dtype."""
    if x.dtype == out.dtype:
        torch.mm(x, weight.t(), out=out)
        if bias is not None:
            out.add_(bias)
        return
    low = scratch.get(x.dtype, x.shape[0])
    torch.mm(x, weight.t(), out=low)
    if bias is not None:
        low.add_(bias)
    out.copy_(low)


@dataclass
class _Spec:
    loss: Loss
    temperature: float | None  # a plain temperature; a learned one is the Function's input
    labels: Tensor | None
    teacher: _TeacherSignal | None
    vocab: int  # the head rows the student's logits are computed for
    kd_vocab: int  # the columns the distillation term compares (shared with the teacher)
    chunk_size: int
    num_tokens: float | Tensor | None
    interpolation: float | None = None  # t of the closed-form KL(p_t || q), or None: autograd per chunk
    compile: bool = False
    ce_weight: float = 0.0  # weight of the fused cross entropy; 0: none
    terms: tuple[Tensor, Tensor] | None = None  # (kd, ce) reduced like the loss, set by forward


def _student_chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = h @ weight.t()
    if bias is not None:
        out = out + bias
    return out


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: Tensor | None, spec: _Spec):
        vocab = spec.vocab
        w = weight[:vocab]
        b = bias[:vocab] if bias is not None else None
        want_h, want_w, want_b, want_t = ctx.needs_input_grad[:4]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # accumulate in >= fp32
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if want_w else None
        grad_b = torch.zeros(vocab, dtype=acc, device=w.device) if want_b else None
        grad_t = torch.zeros((), dtype=acc, device=hidden.device) if want_t else None
        total = torch.zeros(2, dtype=acc, device=hidden.device)  # sums of the kd and ce terms
        # Low-precision heads: the chunk's [V, H] product lands in one reused buffer, then is
        # added to the fp32 accumulator; never a fresh [V, H] temporary per chunk.
        product_buffer = torch.empty_like(w) if want_w and w.dtype != acc else None
        grads = (grad_h, grad_w, grad_b, product_buffer)

        n = hidden.shape[0]
        if spec.interpolation is not None and n > 0:
            total += _closed_form_chunks(hidden, w, b, spec, grads)
        else:
            for start in range(0, n, spec.chunk_size):
                end = min(start + spec.chunk_size, n)
                chunk_terms, grad_t_chunk = _autograd_chunk(hidden, w, b, temperature, spec, start, end, grads, want_t)
                total += chunk_terms
                if grad_t_chunk is not None:
                    grad_t += grad_t_chunk

        kd, ce = (reduce_tokens(term, spec.num_tokens, n) for term in total)
        spec.terms = (kd, ce)
        loss = kd if spec.ce_weight == 0 else (1 - spec.ce_weight) * kd + spec.ce_weight * ce
        scale = reduce_tokens(torch.ones_like(total[0]), spec.num_tokens, n)  # 1 / denominator
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


def _closed_form_chunks(hidden: Tensor, w: Tensor, b: Tensor | None, spec: _Spec, grads: tuple) -> Tensor:
    """KL(p_t || q) (taid, fkl): logits into reused buffers, loss + gradient in place, fold.

    Returns the sums of the kd and ce terms. A fused cross entropy reads the chunk's logits
    before the kernel overwrites them with the KD gradient, into a third buffer that becomes its
    gradient; the two gradients are mixed in place and folded through the head once.
    """
    grad_h, grad_w, grad_b, product_buffer = grads
    n, vocab = hidden.shape[0], spec.vocab
    math_dtype = torch.promote_types(torch.promote_types(w.dtype, torch.float32), spec.teacher.dtype)
    rows = min(spec.chunk_size, n)
    student_buf = torch.empty(rows, vocab, dtype=math_dtype, device=hidden.device)
    teacher_buf = torch.empty(rows, vocab, dtype=math_dtype, device=hidden.device)
    ce_buf = torch.empty(rows, vocab, dtype=math_dtype, device=hidden.device) if spec.ce_weight else None
    scratch = _Scratch(rows, vocab, hidden.device)
    kernel = compiled_interpolated_kl_ if spec.compile else interpolated_kl_
    total = torch.zeros(2, dtype=math_dtype, device=hidden.device)
    with torch.no_grad():
        for start in range(0, n, rows):
            end = min(start + rows, n)
            h_chunk = hidden[start:end]
            logits = student_buf[: end - start]
            _linear_into(logits, h_chunk, w, b, scratch)
            if ce_buf is not None:
                total[1] += cross_entropy_into(ce_buf[: end - start], logits, spec.labels[start:end])
            target = teacher_buf[: end - start]
            spec.teacher.chunk_into(target, start, end, scratch)
            total[0] += kernel(logits, target, spec.interpolation, spec.temperature).sum()
            grad_logits = logits  # the kernel left d(loss)/d(logits) in the student's buffer
            if ce_buf is not None:
                grad_logits.mul_(1 - spec.ce_weight).add_(ce_buf[: end - start], alpha=spec.ce_weight)
            if grad_logits.dtype != h_chunk.dtype:
                grad_logits = scratch.get(h_chunk.dtype, end - start).copy_(logits)
            _fold_chunk_gradient(grad_logits, h_chunk, w, start, end, grad_h, grad_w, product_buffer)
            if grad_b is not None:
                grad_b += logits.sum(0)
    return total


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


def _autograd_chunk(hidden, w, b, temperature, spec: _Spec, start: int, end: int, grads: tuple, want_t: bool):
    """Any loss: differentiate one chunk's loss (+ the fused CE) w.r.t. its logits and the temperature.

    Returns the chunk's [kd, ce] sums and the temperature's gradient (or None).
    """
    grad_h, grad_w, grad_b, product_buffer = grads
    h_chunk = hidden[start:end]
    with torch.no_grad():
        z_chunk = upcast(_student_chunk_logits(h_chunk, w, b))
    teacher_chunk = spec.teacher.chunk(start, end, spec.kd_vocab) if spec.teacher is not None else None
    labels = spec.labels[start:end] if spec.labels is not None else None
    with torch.enable_grad():
        z_leaf = z_chunk.requires_grad_(True)
        t_leaf = temperature.detach().requires_grad_(want_t) if temperature is not None else spec.temperature
        kd_logits = z_leaf if spec.kd_vocab == spec.vocab else z_leaf[:, : spec.kd_vocab]
        kd = spec.loss.per_token(kd_logits, teacher_chunk, temperature=t_leaf,
                                 labels=labels if spec.loss.needs_labels else None).sum()
        ce = _cross_entropy_sum(z_leaf, labels) if spec.ce_weight else torch.zeros_like(kd)
        objective = kd if not spec.ce_weight else (1 - spec.ce_weight) * kd + spec.ce_weight * ce
        inputs = [z_leaf] + ([t_leaf] if want_t else [])
        wanted = any(g is not None for g in (grad_h, grad_w, grad_b)) or want_t
        chunk_grads = torch.autograd.grad(objective, inputs) if wanted and objective.requires_grad else ()
    terms = torch.stack([kd.detach(), ce.detach()])
    if not chunk_grads:
        return terms, None
    _fold_chunk_gradient(chunk_grads[0].to(h_chunk.dtype), h_chunk, w, start, end, grad_h, grad_w, product_buffer)
    if grad_b is not None:
        grad_b += chunk_grads[0].sum(0)
    return terms, chunk_grads[1] if want_t else None


def _cross_entropy_sum(logits: Tensor, labels: Tensor) -> Tensor:
    ce = torch.nn.functional.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    return torch.where(labels >= 0, ce, torch.zeros_like(ce)).sum()


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


def _require_2d(tensor: Tensor | None, what: str) -> None:
    if tensor is not None and tensor.dim() != 2:
        raise ValueError(
            f"chunked engine: {what} must be 2-D [tokens, features], got shape {tuple(tensor.shape)}; "
            f"flatten it first (x.reshape(-1, x.shape[-1]) and the mask with mask.reshape(-1)) — "
            "a 3-D input would otherwise silently defeat chunking"
        )


def chunked_divergence(
    loss: str | Loss,
    student_hidden: Tensor,
    student_weight: Tensor,
    *,
    student_bias: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    teacher_logits: Tensor | None = None,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    num_tokens: float | Tensor | None = None,
    temperature: float | Tensor = 1.0,
    chunk_size: int | None = None,
    chunk_memory_mb: float | None = None,
    use_closed_form: bool = True,
    compile: bool = False,
    ce_weight: float = 0.0,
    return_terms: bool = False,
    **params: float,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Same value and gradients as ``divergence(loss, h @ W.T + b, teacher_logits, mask)``.

    ``loss`` is a loss object or a registered name (its parameters as keywords). The teacher
    comes either as ``teacher_logits [N, V_t]`` or as ``teacher_hidden [N, H_t]`` +
    ``teacher_weight [V_t, H_t]`` (+ bias); it never receives gradients. ``temperature`` may be
    a tensor that requires grad (CTKD's learned temperature): its gradient is returned too.
    Losses that are KL(p_t || q) (``Loss.interpolation``: taid, fkl) use their closed-form
    logits gradient (fewer buffers, no autograd graph per chunk) unless
    ``use_closed_form=False``; the others differentiate each chunk.

    ``ce_weight`` > 0 returns ``(1 - ce_weight) * KD + ce_weight * CE(labels)`` from one pass
    (same value and gradients as the two separate calls mixed); ``return_terms=True`` returns
    ``(loss, kd, ce)``, the two terms detached, each normalised like the loss.

    Chunk size: ``chunk_size`` tokens if given, else as many as fit ``chunk_memory_mb`` MiB of
    ``[chunk, V]`` buffers (default ``DEFAULT_CHUNK_MEMORY_MB`` for the device). ``compile=True``
    runs the closed-form kernel through ``torch.compile`` (falls back to eager if unavailable).
    """
    loss = build_loss(loss, **params)
    name = loss.label()
    for tensor, what in ((student_hidden, "student_hidden"), (student_weight, "student_weight"),
                         (teacher_hidden, "teacher_hidden"), (teacher_weight, "teacher_weight"),
                         (teacher_logits, "teacher_logits")):
        _require_2d(tensor, what)
    n = student_hidden.shape[0]
    if not 0.0 <= ce_weight <= 1.0:
        raise ValueError(f"ce_weight is the cross entropy's share of the loss, in [0, 1]; got {ce_weight}")
    if ce_weight and not loss.needs_teacher:
        raise ValueError(f"ce_weight mixes cross entropy into a distillation loss; loss {name!r} is the student's own loss already")
    if (loss.needs_labels or ce_weight) and labels is None:
        raise ValueError(f"loss {name!r} needs labels= (the target token ids, shape [{n}])")
    uses_teacher = loss.needs_teacher
    if uses_teacher and teacher_logits is None and (teacher_hidden is None or teacher_weight is None):
        raise ValueError(f"loss {name!r} needs the teacher: teacher_logits, or teacher_hidden + teacher_weight")
    teacher_rows = teacher_logits if teacher_logits is not None else teacher_hidden
    if uses_teacher and teacher_rows.shape[0] != n:
        raise ValueError(f"teacher has {teacher_rows.shape[0]} tokens but the student has {n}: outputs are not aligned")
    if mask is None:
        mask = torch.ones(n, dtype=torch.bool, device=student_hidden.device)
    if mask.shape != (n,):
        raise ValueError(f"mask shape {tuple(mask.shape)} must be [{n}] (flatten it like the hidden states)")

    selected = mask.bool()
    all_selected = bool(selected.all())

    def pick(t: Tensor | None) -> Tensor | None:
        return t if t is None or all_selected else t[selected]

    hidden = pick(student_hidden)
    vocab = kd_vocab = student_weight.shape[0]
    teacher = None
    if uses_teacher:
        teacher_vocab = teacher_logits.shape[-1] if teacher_logits is not None else teacher_weight.shape[0]
        kd_vocab = shared_vocab_size(vocab, teacher_vocab)
        teacher = _TeacherSignal(
            logits=pick(teacher_logits.detach()) if teacher_logits is not None else None,
            hidden=pick(teacher_hidden.detach()) if teacher_hidden is not None else None,
            weight=teacher_weight.detach() if teacher_weight is not None else None,
            bias=teacher_bias.detach() if teacher_bias is not None else None,
        )
    if not ce_weight:
        vocab = kd_vocab  # padding rows of the head take no part (and get a zero gradient)
    temperature_tensor = temperature if isinstance(temperature, Tensor) else None
    interpolation = loss.interpolation() if temperature_tensor is None and use_closed_form else None
    if interpolation is not None and kd_vocab != vocab:
        interpolation = None  # the fused CE spans the whole head, the KD the shared columns: autograd per chunk
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    if chunk_size is None:
        rows = _ROWS_AUTOGRAD if interpolation is None else _ROWS_CLOSED_FORM
        if interpolation is not None and student_weight.dtype.itemsize < 4:
            rows += _ROWS_LOW_PRECISION_EXTRA
        if ce_weight:
            rows += _ROWS_CE_AUTOGRAD if interpolation is None else _ROWS_CE_CLOSED_FORM
        chunk_size = auto_chunk_size(vocab, chunk_memory_mb, device=student_hidden.device, rows_per_token=rows)
    spec = _Spec(
        loss=loss,
        temperature=None if temperature_tensor is not None else temperature,
        labels=pick(labels.to(student_hidden.device)) if (loss.needs_labels or ce_weight) else None,
        teacher=teacher,
        vocab=vocab,
        kd_vocab=kd_vocab,
        chunk_size=chunk_size,
        num_tokens=num_tokens,
        interpolation=interpolation,
        compile=compile,
        ce_weight=float(ce_weight),
    )
    result = _ChunkedDivergence.apply(hidden, student_weight, student_bias, temperature_tensor, spec)
    if return_terms:
        kd, ce = spec.terms
        return result, kd.detach(), ce.detach()
    return result
