"""The ``taid-vlm teacher-cache`` subcommand: flags made from ``TeacherCacheConfig``, ``build_cache`` called.

Registered from ``taid_vlm/cli.py`` with ``add_teacher_cache_parser(commands)``; heavy imports wait
until the command runs. Under ``torchrun`` / ``accelerate launch`` every process takes its share
of the shards.
"""

from __future__ import annotations

import argparse

from ..flags import add_config_command, values_from
from .config import TeacherCacheConfig


def add_teacher_cache_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_config_command(
        subparsers, "teacher-cache", TeacherCacheConfig, run_teacher_cache,
        help="run the teacher once over a data set and store its top-k log-probs per response token",
        description="Writes a resumable, sharded cache that `taid-vlm distill --teacher-cache DIR` trains from "
        "without loading the teacher. Re-running the same command finishes an interrupted build.",
    )


def run_teacher_cache(args: argparse.Namespace) -> int:
    """Mistakes (CacheError, DataError, a missing file) reach the CLI's one error path (cli.main)."""
    from ..data import detect_format, load_records
    from .builder import build_cache

    config = TeacherCacheConfig(**values_from(args, TeacherCacheConfig))
    fmt = detect_format(config.data) if config.data_format == "auto" else config.data_format
    options = {"split": config.data_split} if fmt == "hf" else {}
    records = load_records(config.data, format=fmt, limit=config.data_limit, **options)
    teacher = _load_teacher(config)
    result = build_cache(teacher, config.teacher, records, config.output, top_k=config.top_k,
                         logit_dtype=config.logit_dtype, responses=config.responses, batch_size=config.batch_size,
                         max_length=config.max_length, records_per_shard=config.records_per_shard,
                         max_new_tokens=config.max_new_tokens, progress=config.progress)
    if result.is_main:
        print(f"teacher cache complete in {result.root}: {result.shards_total} shard(s), {result.shards_built} built now "
              f"({result.seconds:.0f} s)")
    return 0


def _load_teacher(config: TeacherCacheConfig):
    from accelerate import PartialState

    if config.teacher_server:  # the teacher's top-k from a vLLM server (taid_vlm/teacher_server)
        from ..teacher_server import open_served

        return open_served(config.teacher, config.teacher_server, top_k=config.top_k, timeout=config.teacher_server_timeout,
                           chat_template=config.teacher_chat_template)

    from ..models import load_model

    device = config.teacher_device or PartialState(cpu=not __import__("torch").cuda.is_available()).device
    dtype = None if config.teacher_dtype == "auto" else config.teacher_dtype
    return load_model("teacher", config.teacher, dtype=dtype, device=device, chat_template=config.teacher_chat_template)
