"""`tandem plan`: the command line of the virtual-time planner."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from planner.harness import HARNESSES


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="run a workload's cluster shapes and policies in virtual time; recommend a P/D split",
        description=(
            "Simulate whole clusters in virtual time with tandem's own engine and scheduler, "
            "summarize them like `tandem bench`, and recommend the prefill:decode split and "
            "decider threshold with the most goodput per GPU."
        ),
    )
    parser.add_argument("workload", help="a workload file, or a shipped workload's name")
    parser.add_argument(
        "--policies", default="tandem,round-robin",
        help="comma-separated scheduler configs (shipped names or files)",
    )  # fmt: skip
    parser.add_argument(
        "--clusters", help="comma-separated cluster names from the workload (default: all)"
    )
    parser.add_argument(
        "--ratios", default="",
        help="extra prefill:decode splits of the workload's GPUs, e.g. 2:6,3:5",
    )  # fmt: skip
    parser.add_argument(
        "--thresholds", default="",
        help="decider thresholds (non-cached tokens, ≥ 1) to try on P/D shapes, e.g. 256,2048",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="3 short stages, as in bench")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs simulated at a time, one process each"
    )
    parser.add_argument(
        "--harness", choices=sorted(HARNESSES), default="tandem",
        help=(
            "how load is offered: as tandem bench does, or as inference-perf does (each stage "
            "after the previous one drained, prompts repeating from a fixed pool; the harness "
            "of the published llm-d figures)"
        ),
    )  # fmt: skip
    parser.add_argument("--output", default="results/plan", help="folder for the results")
    parser.add_argument(
        "--compare-with", metavar="RESULTS_JSON",
        help="replay a live `tandem bench` run in virtual time and compare it stage by stage",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bench.progress import progress_bars
    from bench.results import load_results
    from bench.workload import WorkloadError, load_workload
    from planner.compare import compare_runs, markdown, replay
    from planner.run import PlanError, PlanOptions, parse_ratios, run_plan

    try:
        workload = load_workload(args.workload)
        output = Path(args.output) / workload.name
        with progress_bars() as progress:
            tasks: dict[str, tuple[Any, int]] = {}

            def started(label: str, total: int) -> None:
                tasks[label] = (progress.add_task(label, total=total), total)

            def finished(label: str) -> None:
                task, total = tasks[label]
                progress.update(task, completed=total)

            if args.compare_with:
                live_path = Path(args.compare_with)
                live = load_results(live_path)
                planned = replay(live, workload, output)
                report = markdown(compare_runs(live, planned.results), live_path)
                (output / "comparison.md").write_text(report)
                print(report)
                return 0
            thresholds = tuple(int(t) for t in args.thresholds.split(",") if t.strip())
            clusters = args.clusters.split(",") if args.clusters else list(workload.clusters)
            plan = run_plan(
                PlanOptions(
                    workload=workload,
                    policies=tuple(p for p in args.policies.split(",") if p),
                    clusters=tuple(clusters),
                    output=output,
                    ratios=parse_ratios(args.ratios),
                    thresholds=thresholds,
                    quick=args.quick,
                    jobs=max(1, args.jobs),
                    harness=args.harness,
                ),
                on_start=started,
                on_done=lambda _: progress.advance(next(reversed(tasks.values()))[0]),
                on_finished=finished,
            )
    except (PlanError, WorkloadError, ValueError) as exc:
        print(f"tandem plan: {exc}", file=sys.stderr)
        return 2
    for run in plan.results.runs:
        seconds = plan.seconds[f"{run.cluster} / {run.policy}"]
        print(
            f"{run.cluster} / {run.policy}: goodput {run.goodput:.2f} req/s "
            f"({run.goodput_per_gpu:.3f} per GPU)"
            + ("" if run.tail_goodput is None else f", {run.tail_goodput:.2f} under the tail SLO")
            + f", simulated in {seconds:.0f} s"
        )
    if plan.recommendation is not None:
        print("recommended: " + plan.recommendation.sentence().replace("`", ""))
    print(f"results, report and plots: {output}/")
    return 0
