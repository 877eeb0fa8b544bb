"""Teacher/student vocabularies that differ only by padding rows.

Checkpoints of one family often pad their LM head to a multiple of 64 or 128 (Qwen2.5-7B's
152064 vs Qwen2.5-0.5B's 151936): the real tokens are the same, the extra rows are never
produced by the tokenizer. The loss uses the shared first ``min(V_s, V_t)`` columns and says so
once, instead of failing with a shape error deep inside a softmax.
"""

from __future__ import annotations

import warnings

_already_warned: set[tuple[int, int]] = set()


def shared_vocab_size(student_vocab: int, teacher_vocab: int) -> int:
    if student_vocab != teacher_vocab:
        key = (student_vocab, teacher_vocab)
        if key not in _already_warned:
            _already_warned.add(key)
            warnings.warn(
                f"student vocabulary {student_vocab} != teacher vocabulary {teacher_vocab}: "
                f"distilling over the shared first {min(key)} entries (padding rows of the LM "
                "head are ignored). If the tokenizers really differ, this is wrong: check "
                "taid_vlm.models.check_vocab_compatible.",
                stacklevel=3,
            )
    return min(student_vocab, teacher_vocab)
