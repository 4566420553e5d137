"""The `tandem` command line: one subcommand per module of `tandem.commands`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pydantic import ValidationError

from tandem.commands import bench, fuzz, microbench, orchestrator, plan, sidecar, sim, up

COMMANDS = (sim, up, orchestrator, sidecar, bench, microbench, plan, fuzz)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem", description="Prefill/decode disaggregated serving for vLLM."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tandem` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ValidationError as exc:
        parser.exit(2, f"tandem: invalid configuration:\n{exc}\n")
    except ValueError as exc:
        parser.exit(2, f"tandem: {exc}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
