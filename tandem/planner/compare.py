"""Cross-validation: a live `tandem bench` run against the same runs in virtual time.

The live run's results.json says what ran (workload, clusters, policies, time scale); the
planner replays exactly that, with the request path's wall costs scaled to model time, and
each stage's throughput and P50 TTFT are compared. Stages the live run flagged as
machine-limited are reported but not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tandem.bench.generate import schedule
from tandem.bench.records import StageSummary
from tandem.bench.results import BenchResults, RunResult
from tandem.bench.workload import Workload
from tandem.cluster.topology import LOCAL_SCRAPE_INTERVAL_S
from tandem.errors import PlanError
from tandem.planner.cluster import PathModel
from tandem.planner.run import PlanOptions, PlanResults, run_plan

TOLERANCE = 0.15
"""Agreement asked of the planner: ±15 % per stage on throughput and P50 TTFT."""


@dataclass(frozen=True, slots=True)
class StageComparison:
    cluster: str
    policy: str
    stage: int
    rate: float
    live_requests_per_s: float
    virtual_requests_per_s: float
    live_ttft_p50_s: float | None
    virtual_ttft_p50_s: float | None
    machine_limited: bool

    @property
    def throughput_error(self) -> float:
        return _relative(self.virtual_requests_per_s, self.live_requests_per_s)

    @property
    def ttft_error(self) -> float | None:
        if self.live_ttft_p50_s is None or self.virtual_ttft_p50_s is None:
            return None
        return _relative(self.virtual_ttft_p50_s, self.live_ttft_p50_s)

    @property
    def agrees(self) -> bool:
        ttft = self.ttft_error
        return abs(self.throughput_error) <= TOLERANCE and (ttft is None or abs(ttft) <= TOLERANCE)


def _relative(value: float, reference: float) -> float:
    return value / reference - 1 if reference else float("inf")


def compare_runs(live: BenchResults, virtual: BenchResults) -> list[StageComparison]:
    """Stage by stage, for every (cluster, policy) both ran."""
    by_key = {(run.cluster, run.policy): run for run in virtual.runs}
    out: list[StageComparison] = []
    for run in live.runs:
        twin = by_key.get((run.cluster, run.policy))
        if twin is None:
            continue
        stages = {s.stage: s for s in twin.stages}
        for stage in run.stages:
            other = stages.get(stage.stage)
            if other is not None:
                out.append(_stage(run, stage, other))
    return out


def _stage(run: RunResult, live: StageSummary, virtual: StageSummary) -> StageComparison:
    return StageComparison(
        cluster=run.cluster,
        policy=run.policy,
        stage=live.stage,
        rate=live.rate,
        live_requests_per_s=live.requests_per_s,
        virtual_requests_per_s=virtual.requests_per_s,
        live_ttft_p50_s=live.ttft_s.p50,
        virtual_ttft_p50_s=virtual.ttft_s.p50,
        machine_limited=live.machine_limited,
    )


def replay(
    live: BenchResults, workload: Workload, output: Path, path: PathModel | None = None
) -> PlanResults:
    """The live run's clusters and policies, in virtual time, with the path of a local
    cluster (`tandem bench` starts one) at the run's time scale."""
    if not live.time_scale:
        raise PlanError("--compare-with: the results are not from a live run with a time scale")
    return run_plan(
        PlanOptions(
            workload=workload,
            policies=tuple(live.policies),
            clusters=tuple(live.clusters),
            output=output,
            quick=ran_quick(live, workload),
            path=(path or PathModel(scrape_interval_s=LOCAL_SCRAPE_INTERVAL_S)).scaled(
                live.time_scale
            ),
        )
    )


def ran_quick(live: BenchResults, workload: Workload) -> bool:
    """Whether the live run was a `--quick` one: its stages are those quick mode picks."""
    quick = {index: stage.duration for index, stage in schedule(workload, quick=True)}
    ran = {s.stage: s.duration_s for run in live.runs for s in run.stages}
    return (
        bool(ran)
        and ran == quick
        and quick != dict(enumerate(stage.duration for stage in workload.load.stages))
    )


def markdown(comparisons: list[StageComparison], live_path: Path) -> str:
    judged = [c for c in comparisons if not c.machine_limited]
    agreeing = sum(1 for c in judged if c.agrees)
    lines = [
        "# tandem plan vs tandem bench",
        "",
        f"Live run: `{live_path}`. Tolerance ±{TOLERANCE:.0%} on completed requests/s and P50 "
        f"TTFT per stage. {agreeing} of {len(judged)} judged stages agree"
        + (
            f"; {len(comparisons) - len(judged)} machine-limited stages not judged."
            if len(judged) < len(comparisons)
            else "."
        ),
        "",
        "| cluster | policy | stage | rate | live req/s | virtual req/s | Δ | live P50 TTFT (s) "
        "| virtual P50 TTFT (s) | Δ | agrees |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        ttft = c.ttft_error
        verdict = (
            "not judged (machine-limited)" if c.machine_limited else ("yes" if c.agrees else "no")
        )
        lines.append(
            f"| `{c.cluster}` | `{c.policy}` | {c.stage} | {c.rate:g} | "
            f"{c.live_requests_per_s:.2f} | {c.virtual_requests_per_s:.2f} | "
            f"{c.throughput_error:+.1%} | {_s(c.live_ttft_p50_s)} | {_s(c.virtual_ttft_p50_s)} | "
            f"{'-' if ttft is None else f'{ttft:+.1%}'} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
