"""`tandem fuzz`: hostile input against a local deployment (or `--target`), with a report."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.cli.common import options_from, tools_installed

if TYPE_CHECKING:  # hypothesis is imported when the command runs, not with every command
    from tandem.bench.fuzz import FuzzTargets
    from tandem.cli.common import Subparsers
    from tandem.cluster.local import LocalCluster


@dataclass(frozen=True, slots=True)
class FuzzOptions:
    cases: int
    seed: int
    target: str | None
    output: str
    base_port: int


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "fuzz",
        help="send generated malformed and hostile requests; check every answer",
        description="Fuzz the gateway's and the sidecar's routes (hypothesis): no 5xx, no "
        "dropped connection, every error in OpenAI's shape.",
    )
    parser.add_argument("--cases", type=int, default=10_000, help="cases to send (10,000)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed, the same cases")
    parser.add_argument(
        "--target", help="fuzz an existing orchestrator (URL) instead of a local deployment"
    )
    parser.add_argument("--output", default="results/fuzz", help="folder for fuzz.json")
    parser.add_argument("--base-port", type=int, default=18400)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = options_from(FuzzOptions, args)
    with tools_installed("fuzz"):
        from rich.progress import Progress

        from tandem.bench.fuzz import FuzzTargets, run_fuzz
    from tandem.cluster.local import LocalCluster
    from tandem.cluster.topology import ClusterSpec

    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    cluster: LocalCluster | None = None
    if options.target:
        targets = FuzzTargets(gateway=options.target.rstrip("/"))
    else:
        # Fast model time: a generated request that asks for many tokens ends in seconds.
        spec = ClusterSpec(
            prefill=1, decode=1, time_scale=0.05, port=options.base_port,
            base_port=options.base_port + 1, seed=options.seed,
        )  # fmt: skip
        cluster = LocalCluster(spec, output / "run")
        cluster.start()
        targets = local_targets(cluster)
    try:
        with Progress() as progress:
            task = progress.add_task("fuzz", total=options.cases)
            report = run_fuzz(
                targets, cases_to_run=options.cases, seed_value=options.seed,
                on_case=lambda: progress.advance(task),
            )  # fmt: skip
    finally:
        if cluster is not None:
            cluster.stop()
    path = output / "fuzz.json"
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(
        f"{report.cases} cases in {report.seconds:.0f} s ({report.by_target}); statuses "
        f"{report.statuses}; violations: {report.violations} {report.by_violation}",
    )
    for example in report.examples:
        print(f"  {example['violation']}: {example['case']}", file=sys.stderr)
    print(f"written: {path}")
    return 1 if report.violations else 0


def local_targets(cluster: LocalCluster) -> FuzzTargets:
    """The orchestrator, the first decode pod's sidecar and the first prefill pod of a
    started `LocalCluster`."""
    from tandem.bench.fuzz import FuzzTargets

    host = cluster.spec.host
    components = {c.name: c for c in cluster.all_components()}
    return FuzzTargets(
        gateway=cluster.url,
        sidecar=f"http://{host}:{components['decode-0'].port}",
        prefill_address=f"{host}:{components['prefill-0'].port}",
    )
