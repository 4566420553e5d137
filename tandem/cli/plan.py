"""`tandem plan`: a workload's cluster shapes and policies in virtual time, and the P/D split
to run."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tandem.cli.common import add_workload_arguments, options_from, split_list, tools_installed
from tandem.planner.harness import HARNESSES

if TYPE_CHECKING:
    from tandem.cli.common import Subparsers


@dataclass(frozen=True, slots=True)
class PlanCommandOptions:
    workload: str
    policies: str
    clusters: str | None
    quick: bool
    output: str
    ratios: str
    thresholds: str
    jobs: int
    harness: str
    compare_with: str | None
    restart_s: float | None


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="run a workload's cluster shapes and policies in virtual time; recommend a P/D split",
        description=(
            "Simulate whole clusters in virtual time with tandem's own engine and scheduler, "
            "summarize them like `tandem bench`, and recommend the prefill:decode split and "
            "decider threshold with the most goodput per GPU."
        ),
    )
    add_workload_arguments(
        parser,
        policies_help="comma-separated scheduler configs (shipped names or files)",
        quick_help="3 short stages, as in bench",
        output="results/plan",
    )
    parser.add_argument(
        "--ratios",
        default="",
        help="extra prefill:decode splits of the workload's GPUs, e.g. 2:6,3:5",
    )
    parser.add_argument(
        "--thresholds",
        default="",
        help="decider thresholds (non-cached tokens, ≥ 1) to try on P/D shapes, e.g. 256,2048",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs simulated at a time, one process each"
    )
    parser.add_argument(
        "--harness",
        choices=sorted(HARNESSES),
        default="tandem",
        help=(
            "how load is offered: as tandem bench does, or as inference-perf does (each stage "
            "after the previous one drained, prompts repeating from a fixed pool; the harness "
            "of the published llm-d figures)"
        ),
    )
    parser.add_argument(
        "--restart-s",
        type=float,
        help=(
            "model seconds from a pod's stop to its start in the other pool, in clusters "
            "whose pods move (rebalance); default: a minute, what an 8B model on one GPU takes"
        ),
    )
    parser.add_argument(
        "--compare-with",
        metavar="RESULTS_JSON",
        help="replay a live `tandem bench` run in virtual time and compare it stage by stage",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = options_from(PlanCommandOptions, args)
    with tools_installed("plan"):
        from tandem.bench.progress import progress_bars
        from tandem.bench.results import load_results
        from tandem.bench.workload import load_workload
        from tandem.planner.cluster import PathModel
        from tandem.planner.compare import compare_runs, markdown, replay
        from tandem.planner.run import PlanOptions, parse_ratios, parse_thresholds, run_plan

    workload = load_workload(options.workload)
    output = Path(options.output) / workload.name
    with progress_bars() as progress:
        tasks: dict[str, tuple[Any, int]] = {}

        def started(label: str, total: int) -> None:
            tasks[label] = (progress.add_task(label, total=total), total)

        def finished(label: str) -> None:
            task, total = tasks[label]
            progress.update(task, completed=total)

        if options.compare_with:
            live_path = Path(options.compare_with)
            live = load_results(live_path)
            planned = replay(live, workload, output)
            report = markdown(compare_runs(live, planned.results), live_path)
            (output / "comparison.md").write_text(report)
            print(report)
            return 0
        plan = run_plan(
            PlanOptions(
                workload=workload,
                policies=split_list(options.policies),
                clusters=split_list(options.clusters) or tuple(workload.clusters),
                output=output,
                ratios=parse_ratios(options.ratios),
                thresholds=parse_thresholds(options.thresholds),
                quick=options.quick,
                jobs=max(1, options.jobs),
                harness=options.harness,
                path=(
                    PathModel()
                    if options.restart_s is None
                    else PathModel(restart_s=options.restart_s)
                ),
            ),
            on_start=started,
            on_done=lambda _: progress.advance(next(reversed(tasks.values()))[0]),
            on_finished=finished,
        )
    for result in plan.results.runs:
        seconds = plan.seconds[f"{result.cluster} / {result.policy}"]
        tail = (
            "" if result.tail_goodput is None else f", {result.tail_goodput:.2f} under the tail SLO"
        )
        if result.p90_goodput is not None:
            tail += f", {result.p90_goodput:.2f} under P90 TTFT/TPOT"
        print(
            f"{result.cluster} / {result.policy}: goodput {result.goodput:.2f} req/s "
            f"({result.goodput_per_gpu:.3f} per GPU){tail}, simulated in {seconds:.0f} s"
        )
    if plan.recommendation is not None:
        print("recommended: " + plan.recommendation.sentence().replace("`", ""))
    print(f"results, report and plots: {output}/")
    return 0
