"""The ``taid-vlm teacher-server`` subcommand: flags made from ``ServerConfig``; vLLM started,
awaited, stopped on Ctrl-C or SIGTERM. Registered from ``taid_vlm/cli.py``."""

from __future__ import annotations

import argparse

from ..flags import add_config_command, values_from
from .config import ServerConfig


def add_teacher_server_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_config_command(
        subparsers, "teacher-server", ServerConfig, run_teacher_server,
        help="serve a teacher with vLLM for `distill --teacher-server URL` and `teacher-cache --teacher-server URL`",
        description="Starts vLLM's OpenAI-compatible server for a checkpoint folder from the vLLM environment "
        "(scripts/setup_vllm.sh makes it), waits until it answers, prints its URL and runs until Ctrl-C or SIGTERM.",
    )


def run_teacher_server(args: argparse.Namespace) -> int:
    from .launcher import serve_until_stopped

    return serve_until_stopped(ServerConfig(**values_from(args, ServerConfig)))
