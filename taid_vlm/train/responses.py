"""Where the responses being distilled come from.

- ``data`` (default): the data set's own assistant turns.
- ``teacher``: sequence-level KD. The teacher answers every assistant turn once before
  training (turn by turn, each answer conditioned on its own earlier answers); the answers are
  cached in the run directory, so a resumed run reuses them instead of generating again.
- on-policy (GKD): with probability lambda a batch's last assistant turns are replaced by the
  student's own samples, and the teacher then scores what the student actually says.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..data import Record
from ..models import ModelAdapter


def assistant_turns(record: Record) -> list[int]:
    return [i for i, m in enumerate(record.messages) if m["role"] == "assistant"]


def generate_responses(adapter: ModelAdapter, records: Sequence[Record], batch_size: int, max_new_tokens: int,
                       progress: bool = True, **gen_kwargs) -> list[Record]:
    """Replace every assistant turn of every record with ``adapter``'s answer, turn by turn."""
    out = [r.with_messages([dict(m) for m in r.messages]) for r in records]
    max_turns = max((len(assistant_turns(r)) for r in out), default=0)
    total = sum(len(assistant_turns(r)) for r in out)
    bar = tqdm(total=total, desc="teacher responses", unit="turn", disable=not progress)
    for k in range(max_turns):
        todo = [(r, assistant_turns(r)[k]) for r in out if len(assistant_turns(r)) > k]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            prompts = [r.with_messages(r.messages[:turn]) for r, turn in chunk]
            answers = adapter.generate(prompts, max_new_tokens=max_new_tokens, **gen_kwargs)
            for (r, turn), answer in zip(chunk, answers):
                r.messages[turn]["content"] = answer.strip()
            bar.update(len(chunk))
    bar.close()
    return out


def teacher_responses(adapter: ModelAdapter, records: Sequence[Record], cache: Path, batch_size: int,
                      max_new_tokens: int, progress: bool = True) -> list[Record]:
    """Teacher-written responses, generated once and cached as JSONL (id -> assistant turns)."""
    if cache.is_file():
        answers = {}
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            answers[row["id"]] = row["responses"]
        missing = [r.id for r in records if r.id not in answers]
        if not missing:
            return [_with_answers(r, answers[r.id]) for r in records]
    generated = generate_responses(adapter, records, batch_size, max_new_tokens, progress=progress)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for r in generated:
            f.write(json.dumps({"id": r.id, "responses": [r.messages[i]["content"] for i in assistant_turns(r)]}) + "\n")
    tmp.replace(cache)
    return generated


def _with_answers(record: Record, answers: list[str]) -> Record:
    messages = [dict(m) for m in record.messages]
    turns = assistant_turns(record)
    if len(turns) != len(answers):
        raise ValueError(f"cached teacher responses for record {record.id!r} have {len(answers)} turns, the record {len(turns)}; delete the cache to regenerate")
    for i, answer in zip(turns, answers):
        messages[i]["content"] = answer
    return record.with_messages(messages)


def on_policy_batch(student: ModelAdapter, records: Sequence[Record], max_new_tokens: int, temperature: float,
                    seed: int | None = None) -> list[Record]:
    """The batch with each record's LAST assistant turn replaced by a student sample; ``seed``: a
    vLLM sampler's (``train/generator.py``), which draws from the server's own generator."""
    prompts = [r.prompt_only() for r in records]
    sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else {}
    if seed is not None:
        sampling["seed"] = seed
    answers = student.generate(prompts, max_new_tokens=max_new_tokens, **sampling)
    out = []
    for r, p, answer in zip(records, prompts, answers):
        out.append(r.with_messages(p.messages + [{"role": "assistant", "content": answer.strip()}]))
    return out
