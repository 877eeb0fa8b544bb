"""The ``taid-vlm eval`` subcommand: flags made from ``EvalConfig``, the run started, errors printed plainly.

Registered from ``taid_vlm/cli.py`` with ``add_eval_parser(commands)``; heavy imports wait until
the command runs so ``taid-vlm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..flags import add_config_command, values_from
from .config import EvalConfig


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_config_command(
        subparsers, "eval", EvalConfig, run_eval,
        help="score models on VQA, captioning or text with the field's official metrics",
        description="Evaluate one or more models (teacher and students) on the same items; writes results.json, "
        "samples.jsonl and results.md to --output.",
    )


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The run the command line describes (not yet validated)."""
    return EvalConfig(**values_from(args, EvalConfig))


def run_eval(args: argparse.Namespace) -> int:
    """Run the evaluation; bad input prints one clear line and returns 2, as argparse does."""
    from ..data.errors import DataError
    from .errors import EvalError

    config = config_from_args(args)
    try:
        if config.predictions is not None:
            return _run_rescore(config)
        from .harness import run_evaluation  # torch and transformers: only when a model runs

        results = run_evaluation(config)
    except (EvalError, DataError) as e:
        print(f"taid-vlm eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # data-parallel: rank 0 wrote the files and reports them
    print(Path(config.output, "results.md").read_text(encoding="utf-8"), end="")
    submissions = [m["extra"]["submission"] for m in results["models"].values() if m["extra"].get("submission")]
    extra = f" and {', '.join(submissions)}" if submissions else ""
    print(f"wrote results.json, samples.jsonl, results.md{extra} to {config.output} ({len(results['models'])} model(s))")
    return 0


def _run_rescore(config: EvalConfig) -> int:
    """Score --predictions (errors reach run_eval's handler)."""
    from .errors import EvalError
    from .rescore import rescore

    options = config.data_options
    if config.models:
        raise EvalError("--predictions scores a results file; drop --model (or drop --predictions to run the model)")
    if config.limit is not None:
        raise EvalError("--limit does not apply to --predictions: the results file must answer every item")
    label = config.labels[0] if config.labels else None
    rescore(config.predictions, config.benchmark, config.data, config.output, label, config.caption_backend, options,
            vqa_rules=config.vqa_rules)
    print(Path(config.output, "results.md").read_text(encoding="utf-8"), end="")
    print(f"wrote results.json, samples.jsonl and results.md to {config.output} (scored {config.predictions})")
    return 0
