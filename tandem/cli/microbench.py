"""`tandem microbench`: the orchestrator's own cost, one figure at a time."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.cli.common import options_from, tools_installed

if TYPE_CHECKING:
    from tandem.cli.common import Subparsers


@dataclass(frozen=True, slots=True)
class MicrobenchOptions:
    which: str
    output: str
    requests: int
    concurrency: int


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "microbench",
        help="measure the orchestrator's own cost (scheduling time, gateway latency)",
    )
    parser.add_argument(
        "which", choices=("scheduler", "gateway", "sidecar", "ext-proc", "precise-index")
    )
    parser.add_argument("--output", default="results", help="folder for the JSON result")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests to time (scheduler, ext-proc)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="ext_proc streams in flight (ext-proc)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = options_from(MicrobenchOptions, args)
    with tools_installed("microbench"):
        from tandem.bench.microbench import (
            ext_proc_decision_time,
            hop_added_latency,
            precise_index_figures,
            scheduler_pick_time,
        )

    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    result: dict[str, object]
    if options.which == "scheduler":
        result = scheduler_pick_time(requests=options.requests)
    elif options.which == "ext-proc":
        result = ext_proc_decision_time(requests=options.requests, concurrency=options.concurrency)
    elif options.which == "precise-index":
        result = precise_index_figures(requests=options.requests)
    else:
        result = hop_added_latency(options.which, workdir=output)
    path = output / f"microbench-{options.which}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if options.which == "ext-proc":
        latency = result["decision_latency"]
        assert isinstance(latency, dict)
        print(
            f"ext-proc: {result['decisions_per_s']:.0f} decisions/s, decision latency "
            f"p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms "
            f"({result['requests']} requests, {result['concurrency']} streams in flight)",
            file=sys.stderr,
        )
    print(f"written: {path}", file=sys.stderr)
    return 0
