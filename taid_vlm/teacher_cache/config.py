"""What a ``taid-vlm teacher-cache`` build depends on, declared once: the fields are the command's
flags (through ``taid_vlm/flags.py``). Light on purpose (no torch): the CLI builds its parser from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..flags import flag

LOGIT_DTYPE_NAMES = ("bfloat16", "float16", "float32")  # store.LOGIT_DTYPES, without importing torch


@dataclass
class TeacherCacheConfig:
    teacher: str = field(default="", metadata=flag(required=True, help="teacher checkpoint dir, hub id or composed spec"))
    teacher_server: str | None = field(default=None, metadata=flag(
        metavar="URL", help="score with `taid-vlm teacher-server --teacher TEACHER` at URL instead of loading the teacher"))
    teacher_server_timeout: float = field(default=600.0, metadata=flag(
        help="seconds an unreachable server is waited for before the build stops (it resumes)"))
    data: str = field(default="", metadata=flag(
        required=True, help="training data (the same file/dataset distill will use)"))
    output: str = field(default="", metadata=flag(
        required=True, metavar="DIR", help="cache directory (created, or resumed)"))
    top_k: int = field(default=64, metadata=flag(help="teacher tokens kept per position (default 64)"))
    logit_dtype: str = field(default="bfloat16", metadata=flag(
        choices=LOGIT_DTYPE_NAMES, help="storage dtype of the top-k log-probs (default bfloat16)"))
    responses: str = field(default="data", metadata=flag(
        choices=("data", "teacher"),
        help="score the data's responses, or the teacher's own greedy answers (sequence-level KD)"))
    batch_size: int = field(default=8, metadata=flag(help="records per teacher forward pass"))
    max_length: int | None = field(default=None, metadata=flag(
        help="tokens per sequence; prompts are trimmed as in distill"))
    records_per_shard: int = field(default=256, metadata=flag(help="records per shard file (default 256)"))
    data_format: str = "auto"
    data_split: str = field(default="train", metadata=flag(help="Hugging Face datasets only"))
    data_limit: int | None = field(default=None, metadata=flag(help="use only the first N records"))
    teacher_dtype: str = field(default="auto", metadata=flag(help="auto (checkpoint's), bfloat16, float16 or float32"))
    teacher_device: str | None = field(default=None, metadata=flag(
        help="e.g. cuda:1, cpu, auto (default: this process's device)"))
    teacher_chat_template: str | None = field(default=None, metadata=flag(
        help="Jinja template or chatml/plain (as in distill)"))
    max_new_tokens: int = field(default=64, metadata=flag(help="answer length with --responses teacher"))
    progress: bool = field(default=True, metadata=flag("--no-progress", action="store_false"))
