"""How an evaluation record becomes the prompt a model answers.

Scores are only comparable when every model is asked the same way, and the way the field asks
(docs/EVALUATION.md, LLaVA-1.5 / lmms-eval): VQA appends "Answer the question using a single word or
phrase." to the question, captioning asks for one sentence. The same strings are used to build
the training turns (``taid_vlm.data.prompts``), so a student is scored on the prompt it learnt.

Evaluation rows (``question``/``answers``, ``references``) hold no instruction, so one is added.
Conversations (LLaVA, chat) are asked as written, cut before their last assistant turn, which
becomes the reference; VQA conversations only get the suffix when they lack it.
"""

from __future__ import annotations

from ..data.prompts import CAPTION_PROMPT, TEXT_CAPTION_PROMPT, VQA_SUFFIX
from ..data.records import IMAGE_PLACEHOLDER, Record

TASKS = ("vqa", "caption", "text")
DEFAULT_MAX_NEW_TOKENS = {"vqa": 16, "caption": 64, "text": 128}

# What results.json records as "prompt": the user turn a model sees, with fields in braces.
PROMPT_TEMPLATES = {
    ("vqa", "rows"): IMAGE_PLACEHOLDER + "\n{question}" + VQA_SUFFIX,
    ("vqa", "text rows"): "{context}\n{question}" + VQA_SUFFIX,
    ("vqa", "conversations"): "{conversation before its last answer}" + VQA_SUFFIX,
    ("caption", "rows"): IMAGE_PLACEHOLDER + "\n" + CAPTION_PROMPT,
    ("caption", "text rows"): "{context}\n" + TEXT_CAPTION_PROMPT,
    ("caption", "conversations"): "{conversation before its last answer}",
    ("text", "conversations"): "{conversation before its last answer}",
}


def prompt_template(task: str, kind: str) -> str:
    """The template string of ``task`` for rows of ``kind`` ("rows", "text rows", "conversations")."""
    return PROMPT_TEMPLATES[(task, kind)]


def vqa_prompt(record: Record) -> tuple[Record, str]:
    """The question with the VQA suffix on its last user turn (not doubled), and the suffix."""
    prompt = _before_last_answer(record)
    messages = [dict(m) for m in prompt.messages]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    if not messages[last_user]["content"].endswith(VQA_SUFFIX):
        messages[last_user]["content"] += VQA_SUFFIX
    return prompt.with_messages(messages), VQA_SUFFIX


def caption_prompt(record: Record) -> tuple[Record, str]:
    """An evaluation row's image (or text context) followed by the caption instruction.

    The row's own ``prompt`` field wins (the synthetic text set names its own); otherwise the
    image prompt, or its text-scene variant when the record has no image.
    """
    instruction = record.meta.get("prompt")
    if not isinstance(instruction, str) or not instruction.strip():
        instruction = CAPTION_PROMPT if record.images else TEXT_CAPTION_PROMPT
    messages = [dict(m) for m in record.messages]
    messages[-1]["content"] = f"{messages[-1]['content']}\n{instruction}"
    return record.with_messages(messages), instruction


def conversation_prompt(record: Record) -> tuple[Record, str | None]:
    """A conversation asked as written: everything before its last assistant turn."""
    return _before_last_answer(record), None


def last_answer(record: Record) -> str:
    """The content of the record's last assistant turn (the reference of a conversation)."""
    return next(m["content"] for m in reversed(record.messages) if m["role"] == "assistant")


def _before_last_answer(record: Record) -> Record:
    return record.prompt_only() if record.has_response else record
