"""The ``taid-vlm eval`` subcommand: flags in, ``evaluate`` called, errors printed plainly.

Registered from ``taid_vlm/cli.py`` with ``add_eval_parser(commands)``; heavy imports wait until
the command runs so ``taid-vlm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .prompts import DEFAULT_MAX_NEW_TOKENS, TASKS

CAPTION_BACKENDS = ("auto", "pycocoevalcap", "python")  # caption_metrics.BACKENDS, without importing it


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    defaults = ", ".join(f"{t} {n}" for t, n in DEFAULT_MAX_NEW_TOKENS.items())
    parser = subparsers.add_parser(
        "eval",
        help="score models on VQA, captioning or text with the field's official metrics",
        description="Evaluate one or more models (teacher and students) on the same items; writes results.json, "
        "samples.jsonl and results.md to --output.",
    )
    parser.add_argument("--model", action="append", required=True, metavar="PATH",
                        help="checkpoint dir, hub id or composed spec; repeat to compare models")
    parser.add_argument("--label", action="append", metavar="NAME",
                        help="display name per --model, in order (default: the directory name)")
    parser.add_argument("--data", required=True, help="evaluation JSONL (vqa / caption rows), LLaVA or chat file, "
                        "COCO captions file, or a Hugging Face dataset")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the results")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help=f"default by task: {defaults}")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: where the model loads)")
    parser.add_argument("--caption-backend", choices=CAPTION_BACKENDS, default="auto",
                        help="pycocoevalcap (needs Java), python (fallback, no METEOR) or auto")
    parser.add_argument("--image-dir", default=None,
                        help="folder that relative image paths resolve against (default: the data file's folder)")
    parser.add_argument("--split", default=None, help="dataset split (Hugging Face datasets only)")
    parser.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                        help="map our field to a dataset column, e.g. answers=multiple_choice_answer (HF only)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run_eval)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation; bad input prints one clear line and returns 2, as argparse does."""
    from ..data.errors import DataError
    from .errors import EvalError
    from .harness import evaluate

    try:
        options = data_options(args)
        results = evaluate(
            args.model, args.data, args.task, args.output, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, limit=args.limit, labels=args.label, dtype=args.dtype,
            device=args.device, progress=not args.quiet, caption_backend=args.caption_backend,
            data_options=options,
        )  # fmt: skip
    except (EvalError, DataError) as e:
        print(f"taid-vlm eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(Path(args.output, "results.md").read_text(encoding="utf-8"), end="")
    print(f"wrote results.json, samples.jsonl and results.md to {args.output} ({len(results['models'])} model(s))")
    return 0


def data_options(args: argparse.Namespace) -> dict:
    """Loader options: only those given (the file loaders refuse dataset options such as split)."""
    from .errors import EvalError

    options: dict = {}
    if args.image_dir is not None:
        options["image_dir"] = args.image_dir
    if args.split is not None:
        options["split"] = args.split
    if args.column:
        columns = {}
        for item in args.column:
            ours, eq, theirs = item.partition("=")
            if not eq or not ours or not theirs:
                raise EvalError(f"--column {item!r} must be FIELD=COLUMN, e.g. answers=multiple_choice_answer")
            columns[ours] = theirs
        options["columns"] = columns
    return options
