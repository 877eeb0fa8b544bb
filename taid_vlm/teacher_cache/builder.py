"""Build a teacher cache: run the teacher once over every record and keep its top-k per token.

The teacher sees each record through its own processor and chat template (its adapter), with
prompts trimmed to ``max_length`` exactly as training trims them. For each response token the
top-k log-probs are taken from the teacher's hidden states and head chunk by chunk, so no
``[N, V]`` tensor of the whole batch is ever held.

Work is split by shard: shard i holds records ``[i * S, (i + 1) * S)`` and is computed by rank
``i % world_size`` in batches that start at the shard's first record. Finished shards are
skipped on a re-run, so a killed job resumes where it stopped and the result does not depend on
how many processes built it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.records import Record
from ..data.truncate import fit_prompt
from ..losses import TopK
from ..models import ModelAdapter
from ..models.cross_tokenizer import TextSide, teacher_topk
from ..models.outputs import ResponseOutputs
from .fingerprint import record_hash, teacher_fingerprint
from .store import (
    LOGIT_DTYPES, META_FILE, RESPONSE_SOURCES, TEACHER_TEXT_DIR, CacheError, CacheSettings, RecordRows, read_meta, shard_path,
    shard_records, write_json_atomically, write_shard,
)  # fmt: skip

# Rows of [rows, V] fp32 logits formed at once when taking the top-k (32 MiB at V = 128k).
TOPK_ROWS = 64


@dataclass
class BuildResult:
    root: Path
    shards_built: int
    shards_total: int
    tokens: int
    seconds: float
    is_main: bool


def build_cache(
    teacher: ModelAdapter,
    teacher_name: str,
    records: Sequence[Record],
    output: str | Path,
    *,
    top_k: int = 64,
    logit_dtype: str = "bfloat16",
    responses: str = "data",
    batch_size: int = 8,
    max_length: int | None = None,
    records_per_shard: int = 256,
    max_new_tokens: int = 64,
    progress: bool = True,
) -> BuildResult:
    """Write (or finish) the cache for ``records`` under ``output``; every rank calls this."""
    from accelerate import PartialState

    started = time.perf_counter()
    state = PartialState(cpu=not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    if logit_dtype not in LOGIT_DTYPES:
        raise CacheError(f"--logit-dtype {logit_dtype!r} is not one of {', '.join(LOGIT_DTYPES)}")
    if responses not in RESPONSE_SOURCES:
        raise CacheError(f"--responses {responses!r} is not one of {', '.join(RESPONSE_SOURCES)}")
    if top_k < 1 or batch_size < 1 or records_per_shard < 1:
        raise CacheError(f"--top-k, --batch-size and records per shard must be >= 1 (got {top_k}, {batch_size}, {records_per_shard})")
    _check_unique_ids(records)
    root = Path(output)
    fingerprint = teacher_fingerprint(teacher, teacher_name, max_length)
    settings = CacheSettings(top_k=min(top_k, fingerprint["vocab_size"]), logit_dtype=logit_dtype, responses=responses,
                             records_per_shard=records_per_shard, teacher=fingerprint, num_records=len(records),
                             record_ids_sha256=_ids_digest(records))
    if state.is_main_process:
        _start_or_resume(root, settings)
        TextSide.of(teacher, f"teacher={teacher_name}").save(root / TEACHER_TEXT_DIR)  # for cross-tokenizer students
    state.wait_for_everyone()

    mine = [s for s in range(settings.num_shards) if s % world == rank]
    todo = [s for s in mine if not _shard_done(root, s, records, settings)]
    todo_tokens_bar = tqdm(total=sum(min(records_per_shard, len(records) - s * records_per_shard) for s in todo),
                           desc=f"teacher cache (rank {rank})" if world > 1 else "teacher cache", unit="record",
                           disable=not progress)
    tokens = 0
    for shard in todo:
        chunk = records[shard * records_per_shard:(shard + 1) * records_per_shard]
        rows = []
        for start in range(0, len(chunk), batch_size):
            batch = list(chunk[start:start + batch_size])
            rows.extend(_score_batch(teacher, batch, settings, max_length, max_new_tokens))
            tokens += sum(int(r.token_ids.numel()) for r in rows[-len(batch):])
            todo_tokens_bar.update(len(batch))
            todo_tokens_bar.set_postfix(tokens_per_s=f"{tokens / max(time.perf_counter() - started, 1e-9):.0f}")
        write_shard(shard_path(root, shard), rows, settings)
    todo_tokens_bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [s for s in range(settings.num_shards) if not shard_path(root, s).is_file()]
        if missing:
            raise CacheError(f"{root}: shards {missing[:10]} are missing after the build; run the command again to finish")
        write_json_atomically(root / META_FILE, dict(settings.to_dict(), complete=True))
    state.wait_for_everyone()
    return BuildResult(root, len(todo), settings.num_shards, tokens, time.perf_counter() - started, state.is_main_process)


def _check_unique_ids(records: Sequence[Record]) -> None:
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise CacheError(f"record id {r.id!r} appears twice in the data; the cache is keyed on record ids, make them unique")
        seen.add(r.id)


def _ids_digest(records: Sequence[Record]) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(r.id.encode() + b"\0")
    return digest.hexdigest()[:32]


def _start_or_resume(root: Path, settings: CacheSettings) -> None:
    """Write the settings of a new cache, or check that a partial one was started with the same."""
    existing = read_meta(root)
    wanted = settings.to_dict()
    if existing is None:
        if root.exists() and any(root.iterdir()):
            raise CacheError(f"{root} exists and is not a teacher cache; choose an empty or new --output")
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomically(root / META_FILE, dict(wanted, complete=False))
        return
    differing = sorted(k for k in wanted if existing.get(k) != wanted[k])
    if differing:
        details = "; ".join(f"{k}: cached {existing.get(k)!r}, now {wanted[k]!r}" for k in differing if k != "teacher")
        if "teacher" in differing:
            changed = [k for k in wanted["teacher"] if existing.get("teacher", {}).get(k) != wanted["teacher"][k]]
            details = "; ".join(filter(None, [details, f"teacher fields {changed}"]))
        raise CacheError(f"{root} holds a teacher cache built with other settings ({details}); use another --output, "
                         "or delete it to rebuild")
    if not existing.get("complete"):
        write_json_atomically(root / META_FILE, dict(wanted, complete=False))


def _shard_done(root: Path, shard: int, records: Sequence[Record], settings: CacheSettings) -> bool:
    path = shard_path(root, shard)
    if not path.is_file():
        return False
    chunk = records[shard * settings.records_per_shard:(shard + 1) * settings.records_per_shard]
    return shard_records(path) == [(r.id, record_hash(r)) for r in chunk]


def _score_batch(teacher: ModelAdapter, batch: list[Record], settings: CacheSettings, max_length: int | None,
                 max_new_tokens: int) -> list[RecordRows]:
    hashes = [record_hash(r) for r in batch]
    answers = None
    if settings.responses == "teacher":
        batch = _teacher_answers(teacher, batch, max_new_tokens)
        answers = [[m["content"] for m in r.messages if m["role"] == "assistant"] for r in batch]
    if max_length:
        batch = [fit_prompt(r, lambda x: teacher.render([x]).input_ids.shape[1], max_length) for r in batch]
    with torch.no_grad():
        out = teacher.response_outputs(batch, return_hidden=True)
    topk = _topk(out, settings.top_k)
    rows = []
    for i, record in enumerate(batch):
        keep = out.record_index == i
        rows.append(RecordRows(record.id, hashes[i], out.token_ids[keep].cpu(), topk.select(keep.cpu()),
                               answers[i] if answers is not None else None))
    return rows


def _teacher_answers(teacher: ModelAdapter, batch: list[Record], max_new_tokens: int) -> list[Record]:
    """Every assistant turn replaced by the teacher's greedy answer, turn by turn (each answer
    conditioned on its own earlier answers), as sequence-level KD trains on them."""
    out = [r.with_messages([dict(m) for m in r.messages]) for r in batch]
    turns = [[i for i, m in enumerate(r.messages) if m["role"] == "assistant"] for r in out]
    for k in range(max((len(t) for t in turns), default=0)):
        todo = [(r, t[k]) for r, t in zip(out, turns) if len(t) > k]
        answers = teacher.generate([r.with_messages(r.messages[:turn]) for r, turn in todo], max_new_tokens=max_new_tokens)
        for (r, turn), answer in zip(todo, answers):
            r.messages[turn]["content"] = answer.strip()
    return out


def _topk(out: ResponseOutputs, k: int) -> TopK:
    """Top-k over the teacher's logits, TOPK_ROWS tokens at a time (never [N, V] at once); a served
    teacher's outputs already are its top-k + tail."""
    topk = teacher_topk(out, torch.arange(out.num_tokens), k, block=TOPK_ROWS)
    return TopK(topk.ids.cpu(), topk.logprobs.cpu(), topk.tail.cpu())
