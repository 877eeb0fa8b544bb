"""The ``taid-vlm`` command. Thin: parses arguments and calls data/, train/ or eval/.

Heavy imports (torch, transformers) happen inside the subcommands, so ``taid-vlm --help``
answers at once.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from . import __version__
from .errors import Stopped, user_message
from .eval.command import add_eval_parser
from .flags import add_dataclass_arguments, values_from
from .teacher_cache.command import add_teacher_cache_parser
from .teacher_server.command import add_teacher_server_parser

DEBUG_ENV = "TAID_VLM_DEBUG"  # =1: failures keep their traceback, as --debug does


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``argv`` (when given) lets ``distill`` add the flags of a loss it names."""
    parser = argparse.ArgumentParser(
        prog="taid-vlm",
        description="Distil compact VLMs and LLMs with TAID, and evaluate them on VQA, captioning and text.",
    )
    parser.add_argument("--version", action="version", version=f"taid-vlm {__version__}")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of a failure (or set {DEBUG_ENV}=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_data(commands)
    _add_distill(commands, argv)
    add_teacher_cache_parser(commands)
    add_teacher_server_parser(commands)
    add_eval_parser(commands)
    _add_demo(commands)
    return parser


# ---- data -----------------------------------------------------------------------------------------


def _add_data(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="generate or inspect data sets")
    kinds = data.add_subparsers(dest="data_command", metavar="KIND", required=True)
    shapes = kinds.add_parser("shapes", help="write the synthetic scenes set (VQA + captions), offline")
    shapes.add_argument("--output", "--out", dest="output", required=True, help="output directory")
    shapes.add_argument("--n-train", type=int, default=2000, help="training scenes (default 2000)")
    shapes.add_argument("--n-test", type=int, default=500, help="test scenes (default 500)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=64)
    shapes.add_argument("--text", action="store_true", help="describe scenes in text instead of images (text-only LLMs)")
    shapes.add_argument("--qa-turns", type=int, default=3, help="question turns per training conversation (default 3)")
    shapes.add_argument("--overwrite", action="store_true", help="replace the data set files already in --output")
    shapes.set_defaults(func=_run_data_shapes)


def _run_data_shapes(args: argparse.Namespace) -> int:
    from .demo.shapes import format_summary, generate_shapes, refuse_to_replace

    if not args.overwrite:
        refuse_to_replace(args.output)
    summary = generate_shapes(args.output, args.n_train, args.n_test, seed=args.seed, image_size=args.image_size,
                              text=args.text, qa_turns=args.qa_turns)
    print(format_summary(summary))
    return 0


# ---- distill --------------------------------------------------------------------------------------


def _add_distill(commands: argparse._SubParsersAction, argv: list[str] | None = None) -> None:
    from .train.config import DistillConfig, add_loss_setting_arguments, loss_in_command_line

    distill = commands.add_parser(
        "distill",
        help="distil a student from a teacher (TAID by default)",
        description="Every config key is also a flag; a YAML --config is read first, then flags, then key=value "
                    "overrides (anywhere on the line).",
    )
    distill.add_argument("--config", help="YAML file of config keys (a recipe)")
    distill.add_argument("overrides", nargs="*", metavar="key=value", help="final overrides, e.g. taid.t_start=0.2")
    add_dataclass_arguments(distill, DistillConfig, layered=True)
    add_loss_setting_arguments(distill, loss_in_command_line(argv or []))  # a module:Class loss's flags too
    distill.set_defaults(func=_run_distill)


def _run_distill(args: argparse.Namespace) -> int:
    from .train.config import DistillConfig, load_config, loss_setting_values

    config = load_config(args.config, {**values_from(args, DistillConfig), **loss_setting_values(args)}, args.overrides)
    args.run_dir = config.output  # for the interruption message
    from .train import distill

    result = distill(config)
    if result.is_main:
        print(f"student saved to {result.student_dir} after {result.steps} steps ({result.seconds:.0f} s)")
    return 0


# ---- demo -----------------------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction) -> None:
    from .demo.presets import PRESETS

    demo = commands.add_parser(
        "demo", help="the whole pipeline offline on synthetic data: teacher, sft/fkl/taid students, evaluation, report",
        description="Generates the shapes set, trains a teacher on it, distils students with sft, fkl and taid under one "
                    "budget on a small transfer set (the first scenes of the teacher's), evaluates all of them and writes "
                    "OUTPUT/report.md. Default preset: aimed at about 10 min on 2 quiet CPU cores.",
    )
    demo.add_argument("--output", "--out", dest="output", default="taid-demo", help="output directory (default ./taid-demo)")
    demo.add_argument("--overwrite", action="store_true", help="use --output even though it holds files the demo did not write")
    size = demo.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick", help="~2 min smoke run (CI)")
    size.add_argument("--full", dest="preset", action="store_const", const="full", help="a bigger budget (more data, 3x the steps)")
    size.add_argument("--preset", dest="preset", choices=list(PRESETS),
                      help="same-data: students train on the teacher's whole set (the demo before the transfer regime)")
    demo.add_argument("--text", action="store_true", help="text-only LLMs on the scenes described in words")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", dest="progress", action="store_false")
    demo.set_defaults(func=_run_demo, preset="default")  # the group's first action would default it to None


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import PRESETS, run_demo
    from .demo.report import gap_closed

    result = run_demo(args.output, PRESETS[args.preset], text=args.text, seed=args.seed, progress=args.progress,
                      overwrite=args.overwrite)
    closed = gap_closed(result.rows)
    print(f"\n{'model':<14}{'params':>10}{'VQA acc':>10}{'CIDEr':>9}{'BLEU-4':>9}{'gap closed':>12}")
    for r in result.rows:
        share = closed.get(r["model"])
        print(f"{r['model']:<14}{r['params'] / 1e6:>9.2f}M{r['vqa_accuracy']:>10.2f}{(r['CIDEr'] or 0):>9.2f}"
              f"{(r['BLEU-4'] or 0):>9.2f}{'' if share is None else f'{share * 100:.0f}%':>12}")
    print(f"\nreport: {result.report}   (total {result.total_seconds:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parse_command_line(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    prog = f"taid-vlm {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted. {_resume_hint(args)}", file=sys.stderr)
        return 130
    except Stopped as e:  # SIGTERM / SIGUSR1: the run saved its step and stopped (train/stopping.py)
        if str(e):
            print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes one line
        if debug:
            raise
        message = user_message(e)
        if message is not None:
            print(f"{prog}: error: {message}", file=sys.stderr)
            return 2
        print(f"{prog}: error: internal error ({type(e).__name__}: {' '.join(str(e).split())}); rerun with --debug "
              f"or {DEBUG_ENV}=1 for the traceback and report it", file=sys.stderr)
        return 1


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # key=value, e.g. save_every=5 or loss_params.beta=0.3


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, except that a command's ``key=value`` overrides may stand anywhere on the line.

    argparse fills a positional list once, from the words before the first flag that follows it:
    ``--output DIR save_every=5`` would leave ``save_every=5`` "unrecognized". Those words come
    back from ``parse_known_args`` and join the overrides in the order written; anything else
    unrecognized is refused as ``parse_args`` refuses it.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides"):
        late = [word for word in extra if _OVERRIDE.match(word)]
        args.overrides = [*(args.overrides or []), *late]
        extra = [word for word in extra if not _OVERRIDE.match(word)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _resume_hint(args: argparse.Namespace) -> str:
    """Where the last checkpoint is and how to continue (distill); other commands just stop."""
    run_dir = getattr(args, "run_dir", None)
    if not run_dir:
        return "Nothing was lost; run the command again to redo it."
    from .train.checkpoint import latest_checkpoint

    last = latest_checkpoint(run_dir)
    if last is None:
        return f"No checkpoint was written in {run_dir} yet; run the same command again to start over."
    return f"Last checkpoint: {last}; continue with the same command plus --resume."


if __name__ == "__main__":
    sys.exit(main())
