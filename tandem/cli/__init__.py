"""The `tandem` command line: one subcommand per module of this package.

The serving commands (sim, up, orchestrator, sidecar) are always there; the tools (bench,
microbench, plan, fuzz) where their code is (the serving image leaves it out), and they say how
to install their libraries (the `tools` extra) when those are missing.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from types import ModuleType

from tandem.cli import orchestrator, sidecar, sim, up
from tandem.errors import StartupError, UsageError

SERVING = (sim, up, orchestrator, sidecar)
TOOLS = ("bench", "microbench", "plan", "fuzz")
"""Modules of this package, each a command that needs `tandem.bench` or `tandem.planner`."""


def commands() -> tuple[ModuleType, ...]:
    """Every command this install has: the serving ones, and the tools where they are."""
    try:
        importlib.import_module("tandem.bench")
    except ModuleNotFoundError as exc:
        if exc.name != "tandem.bench":
            raise
        return SERVING
    return (*SERVING, *(importlib.import_module(f"tandem.cli.{name}") for name in TOOLS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem", description="Prefill/decode disaggregated serving for vLLM."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in commands():
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tandem` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except UsageError as exc:  # what the user can fix; any other exception is a bug
        parser.exit(2, f"tandem: {exc}\n")
    except StartupError as exc:  # a process it started did not come up
        parser.exit(1, f"tandem: {exc}\n")
    return code
