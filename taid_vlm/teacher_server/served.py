"""A model that runs in a vLLM server, behind the adapter interface the cache builder, the loop and
the evaluation harness use.

``ServedModel`` renders records with the checkpoint's own processor and chat template (a
``ModelAdapter`` built without weights, on the meta device) and sends the server the rendered
token ids, never re-tokenised text, so the server scores exactly the tokens the student is
trained on. Records with images go through the chat endpoint, which must process images itself
(a completion request carries no images): the server renders the conversation with the
checkpoint's template and the ids it reports are checked against ours, token for token.

The teacher's signal per response token is the top-k of the server's prompt log-probs (raw:
the model's log-softmax, ``logprobs_mode=raw_logprobs``) plus the tail, ``log(1 - sum exp(top-k))``
computed as ``log(-expm1(logsumexp(top-k)))`` in float64: the same ``TopK`` a teacher cache
holds (``losses/topk.py``), so the losses run the very same path. (The cache takes the tail
as the logsumexp of the remaining log-probs, which it has; the two agree to float precision
except when the top-k hold nearly all the mass, where 1 - sum loses digits.)
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..data.records import Record
from ..losses import TopK
from ..models import ModelAdapter, load
from ..models.adapter import RenderedBatch
from ..models.families import template_messages
from ..models.outputs import ResponseOutputs
from .client import ServerClient, base_url
from .fingerprint import checkpoint_digest, served_name
from .client import ServerError

RECORDS_PER_REQUEST = 8


class ServedModel:
    """``folder``'s model answered by the server at ``client``; ``top_k`` log-probs per token.

    Anything not defined here (``render``, ``tokenizer``, ``stop_token_ids``, ``chat_template``...)
    is the weightless adapter's. ``check=False`` skips the name check (a student server whose
    weights the run loads itself).
    """

    def __init__(self, folder: str, client: ServerClient, top_k: int = 20, role: str = "teacher",
                 chat_template: str | None = None, check: bool = True):
        self.folder = str(folder)
        self.client = client
        self.adapter: ModelAdapter = load(folder, role=role, chat_template=chat_template, weights=False)
        self.name = served_name(folder)
        if check:
            client.check_serves(self.name, self.folder)
        else:
            client.model = client.model or (client.served_names() or [None])[0]
        self.weights_sha256 = "files:" + checkpoint_digest(folder)  # the teacher cache's fingerprint field
        self.top_k = min(int(top_k), self.vocab_rows)

    def __getattr__(self, name: str) -> Any:
        if name == "adapter":  # not set yet (during __init__): no recursion
            raise AttributeError(name)
        return getattr(self.adapter, name)

    def __repr__(self) -> str:
        return f"ServedModel({self.folder!r} at {self.client.url})"

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def vocab_rows(self) -> int:
        """The head's rows: the width of the distribution the server's log-probs are over."""
        return int(self.adapter.lm_head().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    # ---- the teacher signal ----------------------------------------------------------------------

    def score(self, records: Sequence[Record], batch: RenderedBatch | None = None) -> tuple[torch.Tensor, torch.Tensor, TopK]:
        """(response token ids, record index, TopK) in the canonical (record, turn, token) order."""
        rows, logprobs = self._prompt_logprobs(records, batch)
        token_ids, record_index, ids, values = [], [], [], []
        for b, (sequence, positions) in enumerate(rows):
            for p in positions:
                top = _top_k(logprobs[b][p], self.top_k, records[b].id, p)
                ids.append([t for t, _ in top])
                values.append([v for _, v in top])
                token_ids.append(sequence[p])
                record_index.append(b)
        k = self.top_k
        ids_t = torch.tensor(ids, dtype=torch.long).reshape(-1, k)
        values_t = torch.tensor(values, dtype=torch.float64).reshape(-1, k)
        return (torch.tensor(token_ids, dtype=torch.long), torch.tensor(record_index, dtype=torch.long),
                TopK(ids_t, values_t.float(), tail_of(values_t, full=k >= self.vocab_rows)))

    def token_logprobs(self, records: Sequence[Record],
                       batch: RenderedBatch | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(response token ids, record index, the model's log-prob of each of them): vLLM returns the
        actual token's log-prob beside the top-k."""
        rows, logprobs = self._prompt_logprobs(records, batch)
        token_ids, record_index, values = [], [], []
        for b, (sequence, positions) in enumerate(rows):
            for p in positions:
                entry = logprobs[b][p] or {}
                if str(sequence[p]) not in entry:
                    raise ServerError(f"record {records[b].id!r}: the server returned no log-prob for token {p}")
                values.append(float(entry[str(sequence[p])]["logprob"]))
                token_ids.append(sequence[p])
                record_index.append(b)
        return torch.tensor(token_ids, dtype=torch.long), torch.tensor(record_index, dtype=torch.long), torch.tensor(values)

    def _prompt_logprobs(self, records: Sequence[Record], batch: RenderedBatch | None) -> tuple[list, dict[int, list]]:
        """Per record (its token ids, its response positions) and the server's prompt log-probs."""
        batch = batch if batch is not None else self.adapter.render(list(records), on_device=False)
        rows = [_ids_and_positions(batch, b) for b in range(len(records))]
        text = [b for b, r in enumerate(records) if not r.images]
        images = [b for b, r in enumerate(records) if r.images]
        logprobs: dict[int, list] = {}
        groups = [text[i:i + RECORDS_PER_REQUEST] for i in range(0, len(text), RECORDS_PER_REQUEST)]
        for group, answer in zip(groups, self.client.map(
                lambda g: self.client.prompt_logprobs([rows[b][0] for b in g], self.top_k), groups)):
            logprobs.update(zip(group, answer))
        for b, (server_ids, answer) in zip(images, self.client.map(
                lambda b: self.client.chat_prompt_logprobs(self.chat_messages(records[b]), self.top_k), images)):
            _check_same_ids(server_ids, rows[b][0], records[b], self.url)
            logprobs[b] = answer
        return rows, logprobs

    def response_outputs(self, records_or_batch: Sequence[Record] | RenderedBatch, return_hidden: bool = True) -> ResponseOutputs:
        """What the teacher cache builder asks of a teacher: here the top-k + tail, no head."""
        if isinstance(records_or_batch, RenderedBatch):
            raise ServerError("a served model scores records, not a batch rendered without them")
        token_ids, record_index, topk = self.score(records_or_batch)
        return ResponseOutputs(token_ids, record_index, topk=topk, cached_vocab_size=self.vocab_rows)

    # ---- generation -------------------------------------------------------------------------------------

    def generate_ids(self, records: Sequence[Record], max_new_tokens: int = 16, temperature: float = 0.0,
                     seed: int | None = None) -> list[list[int]]:
        """The server's answer to each record's prompt, as token ids (stop token included when reached)."""
        prompts = [r.prompt_only() if r.has_response else r for r in records]
        batch = self.adapter.render(prompts, add_generation_prompt=True, on_device=False)
        stops = self.adapter.stop_token_ids
        out: dict[int, list[int]] = {}
        text = [b for b, r in enumerate(prompts) if not r.images]
        groups = [text[i:i + RECORDS_PER_REQUEST] for i in range(0, len(text), RECORDS_PER_REQUEST)]

        def ask(group: list[int]) -> list[list[int]]:
            ids = [batch.input_ids[b][batch.inputs["attention_mask"][b].bool()].tolist() for b in group]
            return self.client.complete(ids, max_new_tokens, temperature, stops, _seed(seed, group[0]))

        for group, answers in zip(groups, self.client.map(ask, groups)):
            out.update(zip(group, answers))
        images = [b for b, r in enumerate(prompts) if r.images]

        def ask_chat(b: int) -> tuple[list[int], list[int]]:
            return self.client.chat_complete(self.chat_messages(prompts[b]), max_new_tokens, temperature, stops,
                                             _seed(seed, b))

        for b, (server_ids, answer) in zip(images, self.client.map(ask_chat, images)):
            _check_same_ids(server_ids, batch.input_ids[b][batch.inputs["attention_mask"][b].bool()].tolist(),
                            prompts[b], self.url)
            out[b] = answer
        return [out[b] for b in range(len(prompts))]

    def generate(self, records: Sequence[Record], max_new_tokens: int = 16, do_sample: bool = False,
                 temperature: float = 1.0, seed: int | None = None, **_: Any) -> list[str]:
        """``ModelAdapter.generate`` through the server: greedy unless ``do_sample``."""
        ids = self.generate_ids(records, max_new_tokens, temperature if do_sample else 0.0, seed)
        return self.adapter.tokenizer.batch_decode(ids, skip_special_tokens=True)

    # ---- requests with images ---------------------------------------------------------------------------

    def chat_messages(self, record: Record) -> list[dict]:
        return chat_messages(record, self.adapter.family_info)


def open_served(folder: str | None, url: str, *, top_k: int, timeout: float, role: str = "teacher",
                chat_template: str | None = None, check: bool = True) -> ServedModel:
    """A ``ServedModel`` for the server at ``url``; without ``folder``, the folder the server loaded
    (its ``root``, which must be readable here)."""
    client = ServerClient(url, timeout=timeout)
    if folder is None:
        roots = client.served_roots()
        folder = next(iter(roots.values()), "")
        if not folder or not (__import__("pathlib").Path(folder) / "config.json").is_file():
            raise ServerError(f"the server at {base_url(url)} serves {list(roots)} from {folder!r}, which is not a "
                              "checkpoint folder here; name the teacher folder too (teacher=DIR)")
    return ServedModel(folder, client, top_k=top_k, role=role, chat_template=chat_template, check=check)


def chat_messages(record: Record, family: Any) -> list[dict]:
    """The record as OpenAI chat messages for a server of a ``family`` model, images as PNG data
    URLs in their places (where the record's ``<image>`` placeholders are, else before the first
    user turn, as the adapter renders them)."""
    images = iter(record.open_images())
    messages = []
    for m in template_messages(record, family, content_parts=True):
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        content = []
        for part in parts:
            if part["type"] == "image":
                content.append({"type": "image_url", "image_url": {"url": _data_url(next(images))}})
            else:
                content.append({"type": "text", "text": part["text"]})
        messages.append({"role": m["role"], "content": content})
    return messages


def tail_of(logprobs: torch.Tensor, full: bool) -> torch.Tensor:
    """``log(1 - sum exp(logprobs))`` per row, in float64 (-inf when the k tokens are the vocabulary)."""
    if full:
        return torch.full(logprobs.shape[:-1], -math.inf)
    mass = torch.logsumexp(logprobs.double(), dim=-1)
    return torch.where(mass < 0, torch.log(-torch.expm1(mass.clamp_max(0))), torch.tensor(-math.inf, dtype=torch.float64)).float()


def _ids_and_positions(batch: RenderedBatch, b: int) -> tuple[list[int], list[int]]:
    keep = batch.inputs["attention_mask"][b].bool()
    ids = batch.input_ids[b][keep]
    positions = batch.response_mask[b][keep].nonzero().squeeze(1)
    return ids.tolist(), positions.tolist()


def _top_k(entry: dict | None, k: int, record_id: str, position: int) -> list[tuple[int, float]]:
    if entry is None:
        raise ServerError(f"record {record_id!r}: the server returned no log-probs at position {position}")
    ranked = sorted(((int(t), float(v["logprob"])) for t, v in entry.items()), key=lambda x: -x[1])[:k]
    if len(ranked) < k:
        raise ServerError(f"record {record_id!r}: the server returned {len(ranked)} log-probs at position {position}, "
                          f"not {k}; start it with --top-k {k} or more")
    return ranked


def _check_same_ids(server: list[int], ours: list[int], record: Record, url: str) -> None:
    if list(server) == list(ours):
        return
    at = next((i for i, (a, b) in enumerate(zip(server, ours)) if a != b), min(len(server), len(ours)))
    raise ServerError(f"record {record.id!r}: the server at {url} renders it differently from the teacher's own "
                      f"processor (token {at} of {len(ours)}: server {server[at:at + 1]}, ours {ours[at:at + 1]}); "
                      "serve the same checkpoint folder and chat template the run uses")


def _data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _seed(seed: int | None, offset: int) -> int | None:
    return None if seed is None else (seed * 1_000_003 + offset) % (1 << 31)
