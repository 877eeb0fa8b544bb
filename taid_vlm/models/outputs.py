"""What an adapter hands to the loss: response tokens only, in one canonical order.

The one contract everything leans on: for a batch of records, teacher and student each return
``ResponseOutputs`` over the SAME response tokens in the SAME order (record, turn, token). Image
tokens, prompt tokens, padding, templates and the one-position shift are resolved inside the
adapter; the loss never sees them. ``signal()`` hands the outputs to the loss engine as one typed
value (``losses.Head``, ``losses.Logits`` or ``losses.TopK``), the student's and the teacher's alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import Head, Logits, TopK


@dataclass
class ResponseOutputs:
    token_ids: torch.Tensor  # [n] long: the response tokens (targets), canonical order
    record_index: torch.Tensor  # [n] long: which record of the batch each token belongs to
    hidden: torch.Tensor | None = None  # [n, H]: final hidden state that PREDICTS each token
    head_weight: torch.Tensor | None = None  # [V, H]: LM head (hidden @ head_weight.T = logits)
    head_bias: torch.Tensor | None = None  # [V] or None
    logits: torch.Tensor | None = None  # [n, V]: when the adapter returns logits instead
    topk: TopK | None = None  # a cached teacher: top-k ids/log-probs + tail mass per token
    cached_vocab_size: int | None = None  # the cached teacher's vocabulary (no head to read it from)
    softcap: float | None = None  # final-logit softcapping of the head (Gemma 2): cap * tanh(logits / cap)

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def vocab_size(self) -> int:
        if self.logits is not None:
            return int(self.logits.shape[-1])
        if self.cached_vocab_size is not None:
            return self.cached_vocab_size
        assert self.head_weight is not None
        return int(self.head_weight.shape[0])

    def signal(self) -> Head | Logits | TopK:
        """What the loss engine reads: the head (hidden states + LM head, never [n, V] at once), the
        logits, or a cached teacher's top-k + tail."""
        if self.topk is not None:
            return self.topk
        if self.hidden is not None:
            assert self.head_weight is not None
            return Head(self.hidden, self.head_weight, self.head_bias, softcap=self.softcap)
        assert self.logits is not None, "ResponseOutputs holds neither hidden states, logits nor top-k"
        return Logits(self.logits)

    def full_logits(self) -> torch.Tensor:
        """Materialise [n, V] logits (the plain path; the chunked engine avoids this)."""
        signal = self.signal()
        if isinstance(signal, TopK):
            raise ValueError("a cached teacher has no full logits, only top-k + tail")
        return signal.full_logits()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ResponseOutputs":
        """Move float tensors (teacher outputs next to the student); ids only change device."""

        def mv(t: torch.Tensor | None, is_float: bool) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if is_float else None)

        return ResponseOutputs(
            token_ids=mv(self.token_ids, False),
            record_index=mv(self.record_index, False),
            hidden=mv(self.hidden, True),
            head_weight=mv(self.head_weight, True),
            head_bias=mv(self.head_bias, True),
            logits=mv(self.logits, True),
            topk=self.topk.to(device) if self.topk is not None else None,  # cached log-probs keep their dtype
            cached_vocab_size=self.cached_vocab_size,
            softcap=self.softcap,
        )
