"""What the engine compares, as typed values: the teacher's signal and the student's head.

The teacher reaches the loss in one of three forms, each a ``TeacherSignal``:

- ``Head(hidden, weight, bias, softcap)``: a live teacher's final hidden states and LM head; the
  engine computes its logits chunk by chunk (and caps them when ``softcap`` is set);
- ``Logits(logits)``: a teacher whose adapter returns logits;
- ``TopK(ids, logprobs, tail)``: a teacher known by its k most probable tokens and the log-mass
  of the rest (an offline cache, a server's top-k logprobs).

The first two are ``FullSignal``s (a logit per vocabulary entry, written into a chunk's buffer
by ``chunk_into``); ``TopK`` is a ``BucketSignal`` (per chunk: the student-vocabulary ids it
covers and the teacher's log-probs on those k buckets plus one tail bucket, ``buckets``). A
new kind of teacher (a cross-tokenizer mapping onto the student's vocabulary, say) is one more
subclass of either family: the engine asks for nothing else.

The student is a ``Head`` too (its ``softcap`` applied inside each chunk, gradient included) or
its logits. Pure tensor math: no model code, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .common import check_softcap, softcap, softcap_, upcast

Tensor = torch.Tensor


class TeacherSignal:
    """The teacher for n response tokens; it never receives gradients."""

    kind: ClassVar[str] = ""  # "full" (FullSignal) or "buckets" (BucketSignal)

    @property
    def rows(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def select(self, keep: Tensor) -> "TeacherSignal":
        """The rows where ``keep`` (a bool mask over the n tokens) is true."""
        raise NotImplementedError

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TeacherSignal":
        """Float tensors to ``dtype`` and everything to ``device`` (ids only change device)."""
        raise NotImplementedError

    def detach(self) -> "TeacherSignal":
        raise NotImplementedError


class FullSignal(TeacherSignal):
    """A logit per vocabulary entry for every token."""

    kind = "full"

    @property
    def vocab(self) -> int:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of its logits after upcasting (fp32, or fp64 for fp64 inputs)."""
        raise NotImplementedError

    def full_logits(self) -> Tensor:
        """All ``[n, V]`` logits at once (the plain path)."""
        raise NotImplementedError

    def chunk_into(self, out: Tensor, start: int, end: int, scratch: "Scratch") -> None:
        """The logits of tokens [start, end), first ``out.shape[1]`` columns, written into ``out``."""
        raise NotImplementedError


class BucketSignal(TeacherSignal):
    """The teacher on k buckets of the student's vocabulary plus one tail bucket per token."""

    kind = "buckets"

    def buckets(self, start: int, end: int, vocab: int) -> tuple[Tensor, Tensor]:
        """``ids [c, k]`` (student-vocabulary ids, long) and fp32 teacher log-probs ``[c, k + 1]``
        on those buckets, the last one the tail (``[c, k]`` when k = V: no tail)."""
        raise NotImplementedError


@dataclass
class Logits(FullSignal):
    """Logits ``[..., V]`` (the leading axes flatten to the tokens)."""

    logits: Tensor

    @property
    def rows(self) -> int:
        return int(self.logits.reshape(-1, self.logits.shape[-1]).shape[0])

    @property
    def device(self) -> torch.device:
        return self.logits.device

    @property
    def vocab(self) -> int:
        return int(self.logits.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return torch.promote_types(self.logits.dtype, torch.float32)

    def full_logits(self) -> Tensor:
        return self.logits

    def select(self, keep: Tensor) -> "Logits":
        return Logits(self.logits.reshape(-1, self.logits.shape[-1])[keep])

    def to(self, device=None, dtype=None) -> "Logits":
        return Logits(self.logits.to(device=device, dtype=dtype))

    def detach(self) -> "Logits":
        return Logits(self.logits.detach())

    def chunk_into(self, out: Tensor, start: int, end: int, scratch: "Scratch") -> None:
        out.copy_(self.logits[start:end, : out.shape[1]])


@dataclass
class Head(FullSignal):
    """Final hidden states ``[n, H]`` and an LM head ``[V, H]`` (+ bias ``[V]``): logits are
    ``hidden @ weight.T + bias``, then ``softcap * tanh(logits / softcap)`` when ``softcap`` is set
    (Gemma 2's final-logit softcapping). The student's head and a live teacher's signal alike."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None
    softcap: float | None = None

    def __post_init__(self) -> None:
        check_softcap(self.softcap, "Head")

    @property
    def rows(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def vocab(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return torch.promote_types(self.weight.dtype, torch.float32)

    def full_logits(self) -> Tensor:
        """Differentiable ``[n, V]`` logits, in the head's dtype (in fp32 or wider when capped)."""
        out = self.hidden @ self.weight.t()
        if self.bias is not None:
            out = out + self.bias
        return softcap(upcast(out), self.softcap) if self.softcap is not None else out

    def select(self, keep: Tensor) -> "Head":
        return replace(self, hidden=self.hidden[keep])

    def to(self, device=None, dtype=None) -> "Head":
        def mv(t):
            return t.to(device=device, dtype=dtype) if t is not None else None

        return replace(self, hidden=mv(self.hidden), weight=mv(self.weight), bias=mv(self.bias))

    def detach(self) -> "Head":
        return replace(self, hidden=self.hidden.detach(), weight=self.weight.detach(),
                       bias=self.bias.detach() if self.bias is not None else None)

    def chunk_into(self, out: Tensor, start: int, end: int, scratch: "Scratch") -> None:
        vocab = out.shape[1]
        bias = self.bias[:vocab] if self.bias is not None else None
        linear_into(out, self.hidden[start:end], self.weight[:vocab], bias, scratch)
        if self.softcap is not None:
            softcap_(out, self.softcap)


@dataclass
class TopK(BucketSignal):
    """The teacher's k most probable tokens per token: ``ids [n, k]``, ``logprobs [n, k]`` and the
    log of the probability mass left over, ``tail [n]``."""

    ids: Tensor
    logprobs: Tensor
    tail: Tensor

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def select(self, keep: Tensor) -> "TopK":
        return TopK(self.ids[keep], self.logprobs[keep], self.tail[keep])

    def to(self, device=None, dtype=None) -> "TopK":
        # cached log-probs keep their (16-bit) dtype in transit: the engine upcasts per chunk
        return TopK(self.ids.to(device), self.logprobs.to(device), self.tail.to(device))

    def detach(self) -> "TopK":
        return self

    def buckets(self, start: int, end: int, vocab: int) -> tuple[Tensor, Tensor]:
        ids = self.ids[start:end].long()
        logprobs = upcast(self.logprobs[start:end])
        if self.k >= vocab:
            return ids, logprobs.clone()
        return ids, torch.cat([logprobs, upcast(self.tail[start:end]).unsqueeze(-1)], dim=-1)

    def check(self, vocab: int) -> None:
        if self.ids.numel() and int(self.ids.max()) >= vocab:
            raise ValueError(
                f"cached teacher token id {int(self.ids.max())} is outside the student's vocabulary of {vocab}: the "
                "cache was built with another tokenizer; rebuild it with the teacher that matches this student"
            )


def as_signal(value: "Tensor | TeacherSignal | None") -> "TeacherSignal | None":
    """A bare tensor is logits; signals pass through."""
    if value is None or isinstance(value, TeacherSignal):
        return value
    if isinstance(value, Tensor):
        return Logits(value)
    raise TypeError(f"a teacher is logits (a tensor), Head, Logits or TopK; got {type(value).__name__}")


def fp32_output_gemm(x: Tensor, weight: Tensor, out: Tensor) -> bool:
    """Whether ``torch.mm(x, weight.T, out_dtype=fp32)`` runs here: 16-bit operands of one dtype,
    an fp32 output, a torch that has the op, on an Ampere or newer CUDA device (or the meta
    device, for checks)."""
    if not (out.dtype == torch.float32 and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype
            and _MM_HAS_OUT_DTYPE):
        return False
    if x.device.type == "meta":
        return True
    return x.device.type == "cuda" and torch.cuda.get_device_capability(x.device)[0] >= 8


_MM_HAS_OUT_DTYPE = "dtype_out" in torch.ops.aten.mm.overloads()


class Scratch:
    """Reused head-dtype buffers for bf16/fp16 matmuls whose result lands in an fp32 buffer."""

    def __init__(self, rows: int, cols: int, device: torch.device):
        self.rows, self.cols, self.device, self.buffers = rows, cols, device, {}

    def get(self, dtype: torch.dtype, rows: int, cols: int | None = None) -> Tensor:
        cols = self.cols if cols is None else cols
        if (dtype, cols) not in self.buffers:
            self.buffers[dtype, cols] = torch.empty(self.rows, cols, dtype=dtype, device=self.device)
        return self.buffers[dtype, cols][:rows]


def linear_into(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, scratch: Scratch) -> None:
    """out = x @ weight.T + bias, the matmul in the head's dtype, the result in out's dtype.

    bf16/fp16 on CUDA: the GEMM writes its fp32 accumulator into ``out`` (``out_dtype``), so the
    logits are never rounded to the head's dtype before the fp32 softmax math; a bf16 result cast
    up afterwards cancels badly in q - p (Liger's fused-linear JSD lost 4-23% of its gradients
    so). Elsewhere (CPU has no such GEMM) the product is rounded to the head's dtype first.
    """
    if x.dtype == out.dtype:
        torch.mm(x, weight.t(), out=out)
        if bias is not None:
            out.add_(bias)
        return
    if fp32_output_gemm(x, weight, out):
        torch.mm(x, weight.t(), out_dtype=out.dtype, out=out)
        if bias is not None:
            out.add_(bias)
        return
    low = scratch.get(x.dtype, x.shape[0], out.shape[1])
    torch.mm(x, weight.t(), out=low)
    if bias is not None:
        low.add_(bias)
    out.copy_(low)
