"""The ``taid-vlm`` command. Thin: parses arguments and calls data/, train/ or eval/."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taid-vlm",
        description="Distil compact VLMs and LLMs with TAID, and evaluate them on VQA, captioning and text.",
    )
    parser.add_argument("--version", action="version", version=f"taid-vlm {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
