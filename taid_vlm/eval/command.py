"""The ``taid-vlm eval`` subcommand: flags in, ``evaluate`` called, errors printed plainly.

Registered from ``taid_vlm/cli.py`` with ``add_eval_parser(commands)``; heavy imports wait until
the command runs so ``taid-vlm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .benchmarks import BENCHMARK_NAMES
from .prompts import DEFAULT_MAX_NEW_TOKENS, TASKS

CAPTION_BACKENDS = ("auto", "pycocoevalcap", "python")  # caption_metrics.BACKENDS, without importing it
VQA_RULES = ("official", "lmms-eval")  # vqa_metrics.VQA_RULES (a test keeps the two equal)


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    defaults = ", ".join(f"{t} {n}" for t, n in DEFAULT_MAX_NEW_TOKENS.items())
    parser = subparsers.add_parser(
        "eval",
        help="score models on VQA, captioning or text with the field's official metrics",
        description="Evaluate one or more models (teacher and students) on the same items; writes results.json, "
        "samples.jsonl and results.md to --output.",
    )
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="checkpoint dir, hub id or composed spec; repeat to compare models")
    parser.add_argument("--predictions", metavar="FILE", help="with --benchmark and no --model: score a results file "
                        "made elsewhere, in the server's or the COCO/VQA results format")
    parser.add_argument("--label", action="append", metavar="NAME",
                        help="display name per --model, in order (default: the directory name)")
    parser.add_argument("--data", required=True, nargs="+", action="extend", metavar="PATH",
                        help="evaluation JSONL (vqa / caption rows), LLaVA or chat file, COCO captions file, or a "
                        "Hugging Face dataset; with --benchmark, the benchmark's own file(s) as downloaded")
    parser.add_argument("--task", choices=TASKS, help="what to score (not needed with --benchmark)")
    parser.add_argument("--benchmark", choices=BENCHMARK_NAMES, metavar="NAME",
                        help=f"read a benchmark's files as distributed and score it its way: {', '.join(BENCHMARK_NAMES)}")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the results")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help=f"default by task: {defaults}")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)")
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: where the model loads)")
    parser.add_argument("--caption-backend", choices=CAPTION_BACKENDS, default="auto",
                        help="pycocoevalcap (needs Java), python (fallback, no METEOR) or auto")
    parser.add_argument("--vqa-rules", choices=VQA_RULES, default=None,
                        help="official: GT-Vision-Lab vqaEval.py (the evaluation server's rules, default); "
                        "lmms-eval: lmms-eval's VQAv2 scorer (docs/EVALUATION.md); a --benchmark whose reference "
                        "evaluator differs uses its own by default (TextVQA: lmms-eval)")
    parser.add_argument("--image-dir", "--images", dest="image_dir", default=None, metavar="DIR",
                        help="folder that relative image paths resolve against, or a benchmark's image folder "
                        "(default: the data file's folder)")
    parser.add_argument("--split", default=None,
                        help="dataset split (Hugging Face datasets; Karpathy files: train, restval, val, test)")
    parser.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                        help="map our field to a dataset column, e.g. answers=multiple_choice_answer (HF only)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run_eval)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation; bad input prints one clear line and returns 2, as argparse does."""
    from ..data.errors import DataError
    from .errors import EvalError

    try:
        options = data_options(args)
        if args.predictions is not None:
            return _run_rescore(args, options)
        from .harness import evaluate  # torch and transformers: only when a model runs

        results = evaluate(
            args.model, args.data, args.task, args.output, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, limit=args.limit, labels=args.label, dtype=args.dtype,
            device=args.device, progress=not args.quiet, caption_backend=args.caption_backend,
            data_options=options, vqa_rules=args.vqa_rules, benchmark=args.benchmark,
        )  # fmt: skip
    except (EvalError, DataError) as e:
        print(f"taid-vlm eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(Path(args.output, "results.md").read_text(encoding="utf-8"), end="")
    submissions = [m["extra"]["submission"] for m in results["models"].values() if m["extra"].get("submission")]
    extra = f" and {', '.join(submissions)}" if submissions else ""
    print(f"wrote results.json, samples.jsonl, results.md{extra} to {args.output} ({len(results['models'])} model(s))")
    return 0


def _run_rescore(args: argparse.Namespace, options: dict) -> int:
    """Score --predictions (errors reach run_eval's handler)."""
    from .errors import EvalError
    from .rescore import rescore

    if args.model:
        raise EvalError("--predictions scores a results file; drop --model (or drop --predictions to run the model)")
    if args.limit is not None:
        raise EvalError("--limit does not apply to --predictions: the results file must answer every item")
    label = args.label[0] if args.label else None
    rescore(args.predictions, args.benchmark, args.data, args.output, label, args.caption_backend, options,
            vqa_rules=args.vqa_rules)
    print(Path(args.output, "results.md").read_text(encoding="utf-8"), end="")
    print(f"wrote results.json, samples.jsonl and results.md to {args.output} (scored {args.predictions})")
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
