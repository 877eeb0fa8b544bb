"""The ``taid-vlm teacher-cache`` subcommand: flags in, ``build_cache`` called, errors printed plainly.

Registered from ``taid_vlm/cli.py`` with ``add_teacher_cache_parser(commands)``; heavy imports wait
until the command runs. Under ``torchrun`` / ``accelerate launch`` every process takes its share
of the shards.
"""

from __future__ import annotations

import argparse

LOGIT_DTYPE_NAMES = ("bfloat16", "float16", "float32")  # store.LOGIT_DTYPES, without importing torch


def add_teacher_cache_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "teacher-cache",
        help="run the teacher once over a data set and store its top-k log-probs per response token",
        description="Writes a resumable, sharded cache that `taid-vlm distill --teacher-cache DIR` trains from "
        "without loading the teacher. Re-running the same command finishes an interrupted build.",
    )
    parser.add_argument("--teacher", required=True, help="teacher checkpoint dir, hub id or composed spec")
    parser.add_argument("--data", required=True, help="training data (the same file/dataset distill will use)")
    parser.add_argument("--output", required=True, metavar="DIR", help="cache directory (created, or resumed)")
    parser.add_argument("--top-k", type=int, default=64, help="teacher tokens kept per position (default 64)")
    parser.add_argument("--logit-dtype", choices=LOGIT_DTYPE_NAMES, default="bfloat16",
                        help="storage dtype of the top-k log-probs (default bfloat16)")
    parser.add_argument("--responses", choices=("data", "teacher"), default="data",
                        help="score the data's responses, or the teacher's own greedy answers (sequence-level KD)")
    parser.add_argument("--batch-size", type=int, default=8, help="records per teacher forward pass")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per sequence; prompts are trimmed as in distill")
    parser.add_argument("--records-per-shard", type=int, default=256, help="records per shard file (default 256)")
    parser.add_argument("--data-format", default="auto")
    parser.add_argument("--data-split", default="train", help="Hugging Face datasets only")
    parser.add_argument("--data-limit", type=int, default=None, help="use only the first N records")
    parser.add_argument("--teacher-dtype", default="auto", help="auto (checkpoint's), bfloat16, float16 or float32")
    parser.add_argument("--teacher-device", default=None, help="e.g. cuda:1, cpu, auto (default: this process's device)")
    parser.add_argument("--teacher-chat-template", default=None, help="Jinja template or chatml/plain (as in distill)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length with --responses teacher")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=run_teacher_cache)
    return parser


def run_teacher_cache(args: argparse.Namespace) -> int:
    """Mistakes (CacheError, DataError, a missing file) reach the CLI's one error path (cli.main)."""
    from ..data import detect_format, load_records
    from .builder import build_cache

    fmt = detect_format(args.data) if args.data_format == "auto" else args.data_format
    options = {"split": args.data_split} if fmt == "hf" else {}
    records = load_records(args.data, format=fmt, limit=args.data_limit, **options)
    teacher = _load_teacher(args)
    result = build_cache(teacher, args.teacher, records, args.output, top_k=args.top_k, logit_dtype=args.logit_dtype,
                         responses=args.responses, batch_size=args.batch_size, max_length=args.max_length,
                         records_per_shard=args.records_per_shard, max_new_tokens=args.max_new_tokens,
                         progress=args.progress)
    if result.is_main:
        print(f"teacher cache complete in {result.root}: {result.shards_total} shard(s), {result.shards_built} built now "
              f"({result.seconds:.0f} s)")
    return 0


def _load_teacher(args: argparse.Namespace):
    from accelerate import PartialState

    from ..models import load_model

    device = args.teacher_device or PartialState(cpu=not __import__("torch").cuda.is_available()).device
    dtype = None if args.teacher_dtype == "auto" else args.teacher_dtype
    return load_model("teacher", args.teacher, dtype=dtype, device=device, chat_template=args.teacher_chat_template)
