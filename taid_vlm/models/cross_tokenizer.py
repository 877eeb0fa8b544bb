"""Teacher and student with different tokenizers: which response tokens correspond, and how the
teacher's next-token distribution reads in the student's vocabulary (docs/CROSS-TOKENIZER.md).

Each side renders a record with its own chat template and tokenizes it, as training does. What
the two renderings share is the assistant text, so every response token gets a key in the
assistant text's own coordinates:

- a content token: ``(turn, c)``, ``c`` the character of the assistant content where the token
  starts (a token that begins in the template, like Idefics3's " The" after "Assistant:",
  starts at the content's first character);
- a turn's first end-of-turn token (``<|im_end|>``, ``<|eot_id|>``...): ``(turn, END)``. The
  markers are different strings but play the same role after the same text, so they are paired
  by role, never by their characters; any further marker token has no key.

The hidden state that predicts a token has read everything before that token's first character,
so a student token and a teacher token with the same key are predicted from the same text: that
pair is aligned. Where the two tokenizers split a stretch of text differently (a group of one or
more tokens on each side covering the same characters), only the group's first tokens share a
key; the others start inside a token of the other side, where that side has no prediction, and
stay unaligned (their share is ``1 - aligned_fraction``).

Character spans come from the tokenizer's offsets (the adapter finds response tokens by them
too); a tokenizer that reports none is refused up front, naming the model. The vocabulary map
pairs entries whose bytes are the same (byte-level BPE, SentencePiece "▁" and ``<0xNN>`` pieces
all read as bytes), special tokens by their text, and the two end-of-turn markers by role.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.records import Record
from ..errors import UserError
from ..files import write_text_atomically
from ..losses.topk import TopK
from .adapter import ModelAdapter, response_spans
from .families import Family, detect_family, template_messages, uses_content_parts

END = -1  # the position part of an end-of-turn marker's key
Key = tuple[int, int]
SIDE_FILE = "text_side.json"
_MEMO_RECORDS = 4096  # rendered records remembered per side (an epoch of a small set; LRU beyond)


class AlignmentError(UserError):
    """The two sides cannot be aligned; the message names the model and the record."""


@dataclass
class TextSide:
    """What one model's side of a pair needs to find its response tokens in text: its tokenizer,
    chat template and family (no weights: a teacher cache keeps this for its teacher)."""

    name: str  # how messages name it: "teacher=PATH", "student=PATH"
    tokenizer: Any
    chat_template: str
    family: Family
    image_token_ids: frozenset[int]
    end_of_turn: str
    _memo: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        self.content_parts = not self.family.text_only and uses_content_parts(self.chat_template)
        self._specials = sorted((t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special),
                                key=len, reverse=True)
        probe = self.tokenizer("A probe.", add_special_tokens=False, return_offsets_mapping=True)
        if "offset_mapping" not in probe:
            raise AlignmentError(
                f"{self.name}: its tokenizer ({type(self.tokenizer).__name__}) reports no character offsets, which "
                "response tokens and the cross-tokenizer alignment are found by; save the model with a fast "
                "tokenizer (a tokenizer.json, e.g. AutoTokenizer.from_pretrained(..., use_fast=True))")

    @classmethod
    def of(cls, adapter: ModelAdapter, name: str) -> "TextSide":
        return cls(name, adapter.tokenizer, adapter.chat_template, adapter.family_info,
                   frozenset(int(i) for i in adapter._image_ids.tolist()), adapter.end_of_turn)

    @property
    def end_of_turn_id(self) -> int | None:
        if not self.end_of_turn:
            return None
        ids = self.tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if ids else None

    # ---- saving with a teacher cache ------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        side = {"family": self.family.model_types[0], "chat_template": self.chat_template,
                "image_token_ids": sorted(self.image_token_ids), "end_of_turn": self.end_of_turn}
        write_text_atomically(out / SIDE_FILE, json.dumps(side, indent=1))

    @classmethod
    def load(cls, directory: str | Path, name: str) -> "TextSide":
        from transformers import AutoTokenizer

        directory = Path(directory)
        side = json.loads((directory / SIDE_FILE).read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(name, tokenizer, side["chat_template"], detect_family(side["family"], source=name),
                   frozenset(side["image_token_ids"]), side["end_of_turn"])

    # ---- response tokens and their keys -----------------------------------------------------------

    def response_tokens(self, record: Record) -> tuple[list[int], list[Key | None]]:
        """The record's response token ids, as this side's adapter returns them, and their keys."""
        memo_key = (record.id, json.dumps(record.messages, sort_keys=True, ensure_ascii=False))
        if memo_key in self._memo:
            self._memo.move_to_end(memo_key)
            return self._memo[memo_key]
        result = self._response_tokens(record)
        self._memo[memo_key] = result
        if len(self._memo) > _MEMO_RECORDS:
            self._memo.popitem(last=False)
        return result

    def _response_tokens(self, record: Record) -> tuple[list[int], list[Key | None]]:
        conversation = template_messages(record, self.family, self.content_parts)
        text, spans = response_spans(conversation, self._render, self._specials, record.id)
        contents = [_text_of(m["content"]) for m in conversation if m["role"] == "assistant"]
        turns = [_turn_layout(text, span, content) for span, content in zip(spans, contents)]
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, keys, markers = [], [], [0] * len(turns)
        for token, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            if b <= a or token in self.image_token_ids:
                continue  # zero-width (added specials outside responses) and image tokens are never response tokens
            turn = next((k for k, (s, e, _, _) in enumerate(turns) if a < e and b > s), None)
            if turn is None:
                continue
            start, end_of_content, lead = turns[turn][0], turns[turn][2], turns[turn][3]
            ids.append(int(token))
            if a < end_of_content:
                keys.append((turn, max(a, start) - start + lead))
            else:
                keys.append((turn, END) if markers[turn] == 0 else None)
                markers[turn] += 1
        return ids, keys

    def _render(self, conversation: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template,
                                                  add_generation_prompt=add_generation_prompt, tokenize=False)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _turn_layout(text: str, span: tuple[int, int], content: str) -> tuple[int, int, int, int]:
    """(start, end, end of the content, lead) of a response span. The span holds the content as
    the template wrote it (whole, or stripped by templates that trim it) and then the marker;
    ``lead`` is where the written content starts in the message's own content."""
    start, end = span
    if content and text.startswith(content, start) and start + len(content) <= end:
        return start, end, start + len(content), 0
    written = content.strip()
    lead = content.find(written) if written else 0
    return start, end, start + len(written), lead


# ---- alignment of a batch ---------------------------------------------------------------------------


@dataclass
class Alignment:
    """Aligned pairs of a batch: ``student_rows[i]`` and ``teacher_rows[i]`` index the two sides'
    response tokens (the rows of their ``ResponseOutputs``)."""

    student_rows: torch.Tensor  # [m] long
    teacher_rows: torch.Tensor  # [m] long
    num_student: int  # all student response tokens of the batch

    @property
    def num_aligned(self) -> int:
        return int(self.student_rows.numel())


def align(student: TextSide, teacher: TextSide, records: Sequence[Record], student_ids: torch.Tensor,
          student_index: torch.Tensor, teacher_ids: torch.Tensor, teacher_index: torch.Tensor) -> Alignment:
    """Pair the response tokens of both sides record by record (``*_ids``/``*_index``: the token
    ids and record indices of each side's ``ResponseOutputs``, in their canonical order)."""
    s_rows, t_rows = [], []
    s_ids, t_ids = student_ids.tolist(), teacher_ids.tolist()
    s_start, t_start = _record_starts(student_index, len(records)), _record_starts(teacher_index, len(records))
    for r, record in enumerate(records):
        s_keys = _checked_keys(student, record, s_ids[s_start[r]:s_start[r + 1]])
        t_keys = _checked_keys(teacher, record, t_ids[t_start[r]:t_start[r + 1]])
        where = {key: i for i, key in enumerate(t_keys) if key is not None}
        for i, key in enumerate(s_keys):
            j = where.get(key) if key is not None else None
            if j is not None:
                s_rows.append(s_start[r] + i)
                t_rows.append(t_start[r] + j)
    as_rows = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    return Alignment(as_rows(s_rows), as_rows(t_rows), len(s_ids))


def _record_starts(record_index: torch.Tensor, num_records: int) -> list[int]:
    counts = torch.bincount(record_index.cpu(), minlength=num_records).tolist()
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    return starts


def _checked_keys(side: TextSide, record: Record, ids: list[int]) -> list[Key | None]:
    expected, keys = side.response_tokens(record)
    if expected != ids:
        raise AlignmentError(
            f"{side.name}: record {record.id!r} has {len(ids)} response tokens in the model's batch but "
            f"{len(expected)} when its tokenizer reads the rendered text alone (the processor changes the text it "
            "tokenizes); cross-tokenizer distillation cannot align this model's responses")
    return keys


# ---- the vocabulary map ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabularyMap:
    """``table[teacher id]``: the student id of the same vocabulary entry, or -1 (no such entry)."""

    table: torch.Tensor  # [teacher head rows] long
    shared: int  # teacher entries that have a student entry
    teacher_entries: int
    student_entries: int

    @classmethod
    def build(cls, teacher: TextSide, student: TextSide, teacher_rows: int | None = None) -> "VocabularyMap":
        """Entries pair by their bytes (specials by their text); the teacher's end-of-turn marker
        maps to the student's. ``teacher_rows``: the teacher head's rows (padding rows map to -1)."""
        t_keys, s_keys = vocabulary_keys(teacher.tokenizer), vocabulary_keys(student.tokenizer)
        where: dict[Any, int] = {}
        for i, key in enumerate(s_keys):
            if key is not None:
                where.setdefault(key, i)
        rows = max(teacher_rows or 0, len(t_keys))
        found = [where.get(key, -1) if key is not None else -1 for key in t_keys]
        table = torch.tensor(found + [-1] * (rows - len(found)), dtype=torch.long)
        t_end, s_end = teacher.end_of_turn_id, student.end_of_turn_id
        if t_end is not None and s_end is not None:
            table[t_end] = s_end
        return cls(table, int((table >= 0).sum()), len(t_keys), len(s_keys))


_BYTE_LEVEL_DECODERS = ("ByteLevel",)


def vocabulary_keys(tokenizer: Any) -> list[Any]:
    """Per id: ``("special", text)`` for a special token, ``("bytes", b)`` for any other entry
    (what the entry writes), None when it writes nothing recognisable."""
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = tokenizer.added_tokens_decoder
    byte_level = _is_byte_level(tokenizer)
    keys: list[Any] = []
    for i, token in enumerate(tokens):
        if i in added:
            entry = added[i]
            keys.append(("special", entry.content) if entry.special else ("bytes", entry.content.encode()))
        elif token is None:
            keys.append(None)
        else:
            keys.append(("bytes", _token_bytes(token, byte_level, tokenizer)))
    return keys


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") in _BYTE_LEVEL_DECODERS for p in parts if isinstance(p, dict))


def _token_bytes(token: str, byte_level: bool, tokenizer: Any) -> bytes:
    if byte_level:
        table = _byte_decoder()
        if all(c in table for c in token):
            return bytes(table[c] for c in token)
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # SentencePiece byte fallback
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    if getattr(tokenizer, "backend_tokenizer", None) is None:  # a Python tokenizer: its own rule
        return tokenizer.convert_tokens_to_string([token]).encode()
    return token.replace("\u2581", " ").encode()  # SentencePiece's word-boundary mark is a space


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable stand-in of each byte -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


# ---- the teacher's top-k in the student's vocabulary -------------------------------------------------


def map_topk(topk: TopK, table: torch.Tensor) -> tuple[TopK, torch.Tensor]:
    """The teacher's top-k + tail over student ids, and the mass that found a student entry.

    Each entry goes to ``table[id]``; entries that land on the same student id are summed; entries
    without one join the tail. Rows come back sorted by probability, the kept entries first; the
    slots left over are empty (id -1, log-prob -inf). Returns ``(TopK, mapped [n])``, ``mapped``
    the probability mass of each row now on student entries.
    """
    ids = table.to(topk.ids.device)[topk.ids.long()]
    logprobs = topk.logprobs.float()
    n, k = ids.shape
    if n == 0:
        return TopK(ids, logprobs, topk.tail.float()), torch.zeros(0)
    order = ids.argsort(dim=-1, stable=True)
    sorted_ids, sorted_lp = ids.gather(-1, order), logprobs.gather(-1, order)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    segment = (starts.cumsum(-1) - 1) + torch.arange(n, device=ids.device).unsqueeze(1) * k  # flat segment index
    flat, values = segment.reshape(-1), sorted_lp.reshape(-1)
    peak = torch.full((n * k,), -torch.inf, device=ids.device).scatter_reduce(0, flat, values, "amax")
    safe_peak = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)
    sums = torch.zeros(n * k, device=ids.device).scatter_add(0, flat, (values - safe_peak[flat]).exp())
    merged = (safe_peak + sums.log()).reshape(n, k)  # log-mass per segment (-inf where unused)
    segment_ids = torch.full((n * k,), -1, dtype=torch.long, device=ids.device).scatter(0, flat, sorted_ids.reshape(-1))
    segment_ids = segment_ids.reshape(n, k)
    used = torch.zeros(n * k, dtype=torch.bool, device=ids.device).scatter(0, flat, torch.ones_like(flat, dtype=torch.bool))
    used = used.reshape(n, k)
    unmapped = used & (segment_ids < 0)
    kept = used & (segment_ids >= 0)
    tail = torch.logaddexp(topk.tail.float(), torch.where(unmapped, merged, torch.full_like(merged, -torch.inf)).logsumexp(-1))
    kept_lp = torch.where(kept, merged, torch.full_like(merged, -torch.inf))
    ranked_lp, rank = kept_lp.sort(dim=-1, descending=True)
    ranked_ids = torch.where(torch.isinf(ranked_lp), torch.full_like(segment_ids, -1), segment_ids.gather(-1, rank))
    width = max(int((ranked_ids >= 0).sum(-1).max()), 1)
    mapped = kept_lp.logsumexp(-1).exp()
    return TopK(ranked_ids[:, :width], ranked_lp[:, :width], tail), mapped


def teacher_topk(outputs: Any, rows: torch.Tensor, k: int, block: int = 64) -> TopK:
    """The top-k + tail of the teacher's ``rows`` (a ``ResponseOutputs`` with hidden states and
    head, logits, or a cached top-k), ``block`` rows of ``[block, V]`` logits at a time (the head's
    final logits, softcapped where the family caps them); never ``[N, V]`` at once."""
    from ..losses.topk import topk_of_logits

    if outputs.topk is not None:
        return outputs.topk.select(rows.to(outputs.topk.ids.device))
    signal = outputs.signal()
    parts = [topk_of_logits(signal.select(rows[start:start + block].to(signal.device)).full_logits(), k)
             for start in range(0, int(rows.numel()), block)]
    if not parts:
        width = min(k, outputs.vocab_size)
        return TopK(torch.empty(0, width, dtype=torch.long), torch.empty(0, width), torch.empty(0))
    return TopK(*(torch.cat([getattr(p, f) for p in parts]) for f in ("ids", "logprobs", "tail")))
