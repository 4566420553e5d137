"""`tandem bench`: every policy on every cluster shape of a workload, on identical requests."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.cli.common import (
    add_workload_arguments,
    configure_logging,
    options_from,
    split_list,
    tools_installed,
)
from tandem.errors import UsageError

if TYPE_CHECKING:
    from tandem.cli.common import Subparsers


@dataclass(frozen=True, slots=True)
class BenchCommandOptions:
    workload: str
    policies: str
    clusters: str | None
    quick: bool
    output: str
    time_scale: float
    target: str | None
    label: str | None
    base_port: int


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a workload against each policy and cluster shape, write results and plots",
        description="Benchmark tandem's scheduler against baselines on identical requests.",
    )
    add_workload_arguments(
        parser,
        policies_help="comma-separated scheduler configs (tandem, round-robin, random, "
        "prefix-only, load-only, or files)",
        quick_help="3 short stages: a few minutes",
        output="results/bench",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=10.0,
        help="wall seconds per model second for the simulated cluster (default 10)",
    )
    parser.add_argument(
        "--target", help="benchmark an existing endpoint instead (URL); --policies is unused"
    )
    parser.add_argument(
        "--label", help="with --target: the run's name in the report (default: host:port)"
    )
    parser.add_argument("--base-port", type=int, default=18600)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = options_from(BenchCommandOptions, args)
    configure_logging("warning")
    with tools_installed("bench"):
        from tandem.bench.runner import BenchOptions, run_bench
        from tandem.bench.workload import load_workload

    workload = load_workload(options.workload)
    # Pods that move between the pools are simulated by `tandem plan` only.
    elastic = [name for name, shape in workload.clusters.items() if shape.rebalance]
    static = tuple(name for name in workload.clusters if name not in elastic)
    clusters = split_list(options.clusters) or static
    unknown = [c for c in clusters if c not in workload.clusters]
    if unknown:
        raise UsageError(
            f"unknown clusters {unknown}; the workload has {', '.join(workload.clusters)}"
        )
    if asked := [c for c in clusters if c in elastic]:
        raise UsageError(
            f"{', '.join(asked)}: its pods move between the pools (rebalance), which "
            f"`tandem plan {workload.name}` simulates; tandem bench runs fixed pools "
            f"({', '.join(static)})"
        )
    if options.quick and not options.clusters:
        clusters = clusters[:1]
    output = Path(options.output) / workload.name
    results = run_bench(
        BenchOptions(
            workload=workload,
            policies=split_list(options.policies),
            clusters=clusters,
            time_scale=options.time_scale,
            output=output,
            quick=options.quick,
            target=options.target,
            label=options.label,
            base_port=options.base_port,
        )
    )
    for result in results.runs:
        forms = [("tail SLO", result.tail_goodput), ("P90 TTFT/TPOT", result.p90_goodput)]
        under = "".join(f", {value:.2f} under {name}" for name, value in forms if value is not None)
        print(f"{result.cluster} / {result.policy}: goodput {result.goodput:.2f} req/s{under}")
    print(f"results, report and plots: {output}/")
    return 0
