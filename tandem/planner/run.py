"""`tandem plan`: every cluster shape x policy (x decider threshold) of a workload, in virtual
time, summarized like `tandem bench`, and the split that serves the most goodput per GPU.

Runs are deterministic: the same workload, options and seed give the same records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tandem.bench.ceilings import hit_rate_ceilings, hit_rate_kv_bounds, kv_capacity
from tandem.bench.generate import (
    BenchRequest,
    PromptSet,
    build_prompts,
    build_requests,
    schedule,
    stage_starts,
)
from tandem.bench.plots import write_plots
from tandem.bench.records import RequestRecord
from tandem.bench.report import write_markdown
from tandem.bench.results import BenchResults, RunResult, SloTargets, write_results
from tandem.bench.summary import summarize_run
from tandem.bench.workload import ClusterShape, Workload
from tandem.costmodel.profiles import get_profile
from tandem.errors import OrchestratorConfigError, PlanError
from tandem.orchestrator.config import ScalingConfig, load_scheduler
from tandem.orchestrator.scheduling.config import EndpointPickerConfig
from tandem.planner.cluster import PathModel, VirtualCluster
from tandem.planner.harness import HARNESSES

DECIDER_TYPES = ("prefix-based-pd-decider", "load-aware-pd-decider", "elastic-pd-decider")
"""Deciders whose `nonCachedTokens` floor `--thresholds` sets."""


@dataclass(frozen=True, slots=True)
class PlanOptions:
    workload: Workload
    policies: tuple[str, ...]
    clusters: tuple[str, ...]
    output: Path
    ratios: tuple[tuple[int, int], ...] = ()
    """Extra prefill:decode splits of the workload's GPUs."""
    thresholds: tuple[int, ...] = ()
    """Decider thresholds (`nonCachedTokens`) to try on P/D shapes; empty: the config's."""
    path: PathModel = field(default_factory=PathModel)
    seed: int = 0
    quick: bool = False
    jobs: int = 1
    """Runs simulated at a time, each in its own process."""
    harness: str = "tandem"
    """How the load is offered (`HARNESSES`): `tandem bench`'s way, or inference-perf's."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    cluster: str
    shape: dict[str, int]
    policy: str
    goodput_per_gpu: float
    runner_up: str | None
    margin: float | None
    """How much more goodput per GPU than the runner-up (0.1 = 10 %)."""

    def sentence(self) -> str:
        shape = ", ".join(f"{role} {count}" for role, count in self.shape.items() if count)
        text = (
            f"`{self.cluster}` ({shape}) with `{self.policy}`: "
            f"{self.goodput_per_gpu:.3f} req/s of goodput per GPU"
        )
        if self.runner_up is not None and self.margin is not None:
            text += f", {self.margin:+.0%} over the runner-up ({self.runner_up})"
        return text


def parse_ratios(text: str) -> tuple[tuple[int, int], ...]:
    """'2:6,3:5' → ((2, 6), (3, 5))."""
    ratios = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        prefill, sep, decode = item.partition(":")
        if not sep or not prefill.isdigit() or not decode.isdigit() or int(decode) < 1:
            raise PlanError(f"--ratios: {item!r} is not PREFILL:DECODE pods, e.g. 3:5")
        ratios.append((int(prefill), int(decode)))
    return tuple(ratios)


def parse_thresholds(text: str) -> tuple[int, ...]:
    """'256,2048' → (256, 2048): decider thresholds, in non-cached tokens (≥ 1)."""
    thresholds = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.isdigit() or int(item) < 1:
            raise PlanError(f"--thresholds: {item!r} is not a number of tokens ≥ 1, e.g. 2048")
        thresholds.append(int(item))
    return tuple(thresholds)


def shapes(options: PlanOptions) -> dict[str, ClusterShape]:
    """The workload's clusters, plus one `pd-P-D` per ratio (same GPU count, checked)."""
    workload = options.workload
    unknown = [name for name in options.clusters if name not in workload.clusters]
    if unknown:
        raise PlanError(
            f"unknown cluster {', '.join(unknown)}; the workload has {', '.join(workload.clusters)}"
        )
    chosen = {name: workload.clusters[name] for name in options.clusters}
    for prefill, decode in options.ratios:
        shape = ClusterShape(prefill=prefill, decode=decode)
        gpus = workload.gpus_of(shape)
        if gpus != workload.gpus:
            per_pod = {
                role: get_profile(workload.profile_for(role)).tensor_parallel_size
                for role in ("prefill", "decode")
            }
            raise PlanError(
                f"--ratios {prefill}:{decode} uses {gpus} GPUs; the workload has "
                f"{workload.gpus} (a prefill pod has {per_pod['prefill']}, a decode pod "
                f"{per_pod['decode']})"
            )
        chosen.setdefault(f"pd-{prefill}-{decode}", shape)
    return chosen


def policy_config(policy: str) -> EndpointPickerConfig:
    """A policy as `tandem bench` names it: a shipped scheduler config, or a file."""
    try:
        return load_scheduler(policy)
    except OrchestratorConfigError as exc:
        raise PlanError(f"--policies {policy}: {exc}") from None


def with_threshold(config: EndpointPickerConfig, threshold: int) -> EndpointPickerConfig | None:
    """The config with its P/D decider's `nonCachedTokens` set; None without a decider."""
    document = config.model_dump(mode="python", exclude_none=True)
    deciders = [p for p in document["plugins"] if p.get("type") in DECIDER_TYPES]
    if not deciders:
        return None
    for plugin in deciders:
        plugin["parameters"] = {**(plugin.get("parameters") or {}), "nonCachedTokens": threshold}
    return EndpointPickerConfig.model_validate(document)


def variants(options: PlanOptions, shape: ClusterShape) -> list[tuple[str, EndpointPickerConfig]]:
    """(label, config) per policy, and per threshold on P/D shapes."""
    out: list[tuple[str, EndpointPickerConfig]] = []
    for policy in options.policies:
        config = policy_config(policy)
        tuned = [
            (f"{policy}@{t}", c)
            for t in options.thresholds
            if shape.prefill and (c := with_threshold(config, t)) is not None
        ]
        out += tuned or [(policy, config)]
    return out


def recommend(runs: Sequence[RunResult]) -> Recommendation | None:
    ranked = sorted(runs, key=lambda r: r.goodput_per_gpu, reverse=True)
    if not ranked:
        return None
    best = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    margin = None
    if runner_up is not None and runner_up.goodput_per_gpu > 0:
        margin = best.goodput_per_gpu / runner_up.goodput_per_gpu - 1
    return Recommendation(
        cluster=best.cluster,
        shape=best.shape,
        policy=best.policy,
        goodput_per_gpu=best.goodput_per_gpu,
        runner_up=f"`{runner_up.cluster}` / `{runner_up.policy}`" if runner_up else None,
        margin=margin,
    )


def _utilization_note(cluster: VirtualCluster) -> str:
    by_role: dict[str, list[float]] = {}
    for role, share in cluster.utilization().values():
        by_role.setdefault(role, []).append(share)
    parts = [f"{role} {sum(v) / len(v):.0%}" for role, v in sorted(by_role.items())]
    return "pool utilization (busy share of the run): " + ", ".join(parts)


def _moves_note(cluster: VirtualCluster) -> str:
    """Every move between the pools: when, which pod became which, and why."""
    if not cluster.moves:
        return "no pod moved between the pools"
    moves = [
        f"{m.started_s:.0f} s {m.pod} → {m.new_pod or '(restarting)'} ({m.move.reason}, "
        f"{m.move.load_per_pod:.2f} → {m.move.load_per_pod_after:.2f} per pod)"
        for m in cluster.moves
    ]
    return f"{len(moves)} pod moves between the pools: " + ", ".join(moves)


@dataclass(slots=True)
class PlanResults:
    results: BenchResults
    recommendation: Recommendation | None
    seconds: dict[str, float]
    """Wall seconds each run took, by `cluster / policy`."""


@dataclass(frozen=True, slots=True)
class _Job:
    cluster: str
    shape: ClusterShape
    label: str
    config: EndpointPickerConfig


@dataclass(frozen=True, slots=True)
class _Outcome:
    records: list[RequestRecord]
    note: str
    seconds: float
    desired_replicas: dict[int, dict[str, float]] = field(default_factory=dict)
    """Mean desired replicas per pool, by stage."""


SCALING_WINDOW_S = 5.0
"""The scaling signals' rate window in a plan: well inside a stage (20-30 s in the shipped
workloads), so each stage's mean reads its own load."""


def scaling_config(workload: Workload) -> ScalingConfig:
    """The scaling signals for a workload's pods and SLO, in model time."""
    return ScalingConfig(
        profile=workload.profile_for("decode"),
        pool_profiles={role: workload.profile_for(role) for role in ("prefill", "both")},
        ttft_s=workload.slo.ttft_ms / 1000,
        itl_s=workload.slo.itl_ms / 1000,
        window_s=SCALING_WINDOW_S,
    )


def _simulate(
    options: PlanOptions,
    job: _Job,
    requests: Sequence[BenchRequest],
    prompts: PromptSet,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> _Outcome:
    started = time.perf_counter()
    workload = options.workload
    cluster = VirtualCluster.build(
        job.shape, workload.role_profiles(), job.config, prompts, workload.model,
        path=options.path, seed=options.seed, on_done=on_done,
        scaling=scaling_config(workload), rebalance=job.shape.rebalance,
    )  # fmt: skip
    starts = None
    if options.harness == "inference-perf":
        starts = stage_starts(schedule(workload, quick=options.quick))
    records = cluster.run(requests, stage_starts=starts)
    seconds = time.perf_counter() - started
    notes = [_utilization_note(cluster)]
    if job.shape.rebalance is not None:
        notes.append(_moves_note(cluster))
    return _Outcome(records, "; ".join(notes), seconds, cluster.desired_replicas())


def _label(job: _Job) -> str:
    return f"{job.cluster} / {job.label}"


def _requests(options: PlanOptions, prompts: PromptSet) -> list[BenchRequest]:
    stages = schedule(options.workload, quick=options.quick)
    pool = options.harness == "inference-perf"
    return build_requests(options.workload, prompts, stages, prompt_pool=pool)


def _simulate_in_worker(options: PlanOptions, job: _Job) -> _Outcome:
    """One run in a worker process: the requests are rebuilt there (they are deterministic)."""
    prompts = build_prompts(options.workload)
    return _simulate(options, job, _requests(options, prompts), prompts)


def run_plan(
    options: PlanOptions,
    *,
    on_start: Callable[[str, int], None] | None = None,
    on_done: Callable[[RequestRecord], None] | None = None,
    on_finished: Callable[[str], None] | None = None,
) -> PlanResults:
    """Run everything in virtual time (`options.jobs` runs at a time); write results.json,
    report.md and plots. Progress: `on_start(run, requests)`, `on_done(record)` (one process
    only), `on_finished(run)`."""
    workload = options.workload
    prompts = build_prompts(workload)
    stages = schedule(workload, quick=options.quick)
    requests = _requests(options, prompts)
    ceilings = hit_rate_ceilings(prompts, requests)
    jobs = [
        _Job(name, shape, label, config)
        for name, shape in shapes(options).items()
        for label, config in variants(options, shape)
    ]
    capacities = {kv_capacity(workload, job.shape) for job in jobs}
    bounds = {c: hit_rate_kv_bounds(prompts, requests, c) for c in capacities}
    outcomes = _run_jobs(options, jobs, requests, prompts, on_start, on_done, on_finished)
    runs: list[RunResult] = []
    seconds: dict[str, float] = {}
    for index, job in enumerate(jobs):
        outcome = outcomes[index]
        seconds[_label(job)] = outcome.seconds
        runs.append(
            RunResult.from_stages(
                cluster=job.cluster,
                shape=job.shape.model_dump(exclude_defaults=True, exclude={"rebalance"}),
                policy=job.label,
                gpus=workload.gpus_of(job.shape),
                stages=summarize_run(
                    outcome.records,
                    stages,
                    workload,
                    None,
                    ceilings,
                    bounds[kv_capacity(workload, job.shape)],
                    desired=lambda stage, *_, means=outcome.desired_replicas: means.get(stage),
                ),
                records=outcome.records,
                notes=[outcome.note, f"simulated in {outcome.seconds:.1f} s of wall time"],
            )
        )
    results = BenchResults(
        workload=workload.name,
        model=workload.model,
        time_scale=0.0,
        target="virtual cluster (tandem plan)",
        slo=SloTargets.of(workload.slo),
        reference={k: v.model_dump(exclude_none=True) for k, v in workload.reference.items()},
        runs=runs,
        metadata={**_path_metadata(options.path), **_harness_metadata(options)},
    )
    recommendation = recommend(runs)
    _write(options.output, results, recommendation)
    return PlanResults(results, recommendation, seconds)


def _run_jobs(
    options: PlanOptions,
    jobs: list[_Job],
    requests: list[BenchRequest],
    prompts: PromptSet,
    on_start: Callable[[str, int], None] | None,
    on_done: Callable[[RequestRecord], None] | None,
    on_finished: Callable[[str], None] | None,
) -> dict[int, _Outcome]:
    """Every job's outcome by its index: in worker processes with `options.jobs` > 1, else
    one after the other here (where `on_done` sees every record)."""
    outcomes: dict[int, _Outcome] = {}
    if options.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=options.jobs) as pool:
            futures = {
                pool.submit(_simulate_in_worker, options, job): index
                for index, job in enumerate(jobs)
            }
            for job in jobs:
                if on_start is not None:
                    on_start(_label(job), len(requests))
            for future in as_completed(futures):
                index = futures[future]
                outcomes[index] = future.result()
                if on_finished is not None:
                    on_finished(_label(jobs[index]))
        return outcomes
    for index, job in enumerate(jobs):
        if on_start is not None:
            on_start(_label(job), len(requests))
        outcomes[index] = _simulate(options, job, requests, prompts, on_done)
        if on_finished is not None:
            on_finished(_label(job))
    return outcomes


def _write(output: Path, results: BenchResults, recommendation: Recommendation | None) -> None:
    """results.json, report.md (the recommendation first) and the plots."""
    lead = ["## Recommendation\n\n" + (recommendation.sentence() if recommendation else "none")]
    output.mkdir(parents=True, exist_ok=True)
    write_results(output / "results.json", results, token_gaps=False)
    write_markdown(output / "report.md", results, title="tandem plan", lead=lead)
    write_plots(output, results)


def _path_metadata(path: PathModel) -> dict[str, str]:
    return {
        "Modelled path": (
            f"gateway hop {path.gateway_s * 1000:g} ms each way, sidecar leg "
            f"{path.sidecar_s * 1000:g} ms, scrape every {path.scrape_interval_s * 1000:g} ms, "
            "KV transfer from the engine profile; a pod moving between the pools restarts "
            f"in {path.restart_s:g} s"
        )
    }


def _harness_metadata(options: PlanOptions) -> dict[str, str]:
    return {
        "Load harness": f"`{options.harness}`, {HARNESSES[options.harness]}",
        "Records": "results.json keeps every request's record without its inter-token gaps",
    }
