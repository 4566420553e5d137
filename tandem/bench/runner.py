"""`tandem bench`: every policy on every cluster shape of a workload, on identical requests.

Each run (cluster shape x policy) gets a fresh local cluster from the `tandem up` machinery,
so no run inherits another's caches; with `--target URL` the same requests go to an existing
deployment instead (one run, named after the target). Results, a Markdown report and plots
are written to the output folder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.progress import Progress

from tandem.bench.ceilings import hit_rate_ceilings, hit_rate_kv_bounds, kv_capacity
from tandem.bench.client import CpuSampler, DesiredReplicasSampler, run_load
from tandem.bench.generate import (
    BenchRequest,
    PromptSet,
    build_prompts,
    build_requests,
    schedule,
)
from tandem.bench.plots import write_plots
from tandem.bench.progress import progress_bars
from tandem.bench.records import RequestRecord
from tandem.bench.report import (
    BenchResults,
    RunResult,
    SloTargets,
    write_markdown,
    write_results,
)
from tandem.bench.summary import histogram_quantiles, summarize_run
from tandem.bench.workload import ClusterShape, Workload
from tandem.cluster.local import LocalCluster
from tandem.cluster.topology import ClusterSpec
from tandem.errors import WorkloadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    workload: Workload
    policies: tuple[str, ...]
    clusters: tuple[str, ...]
    time_scale: float
    output: Path
    quick: bool = False
    target: str | None = None
    label: str | None = None
    """With `target`: the name of the run (default: the target's host and port)."""
    base_port: int = 18600
    seed: int = 0


def _spec(
    shape: ClusterShape, workload: Workload, policy: str, options: BenchOptions
) -> ClusterSpec:
    return ClusterSpec(
        prefill=shape.prefill,
        decode=shape.decode,
        aggregated=shape.both,
        profile=workload.engine_profile,
        scheduler=policy,
        time_scale=options.time_scale,
        port=options.base_port,
        base_port=options.base_port + 1,
        seed=options.seed,
        admission_max_wait_s=(
            workload.admission.max_wait_ms / 1000 if workload.admission is not None else None
        ),
    )


def _run_one(
    url: str,
    model: str | None,
    requests: Sequence[BenchRequest],
    prompts: PromptSet,
    options: BenchOptions,
    progress: Progress,
    label: str,
) -> tuple[list[RequestRecord], CpuSampler, DesiredReplicasSampler]:
    task = progress.add_task(label, total=len(requests))
    cpu = CpuSampler()
    desired = DesiredReplicasSampler(f"{url}/metrics")
    records = asyncio.run(
        run_load(
            f"{url}/v1/completions",
            model,
            requests,
            prompts,
            options.time_scale,
            on_done=lambda _: progress.advance(task),
            cpu=cpu,
            desired=desired,
        )
    )
    return records, cpu, desired


def orchestrator_notes(url: str) -> list[str]:
    """What the run's orchestrator measured of itself that the report should say: the lag
    of the KV events its precise index followed, when it followed any."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return []
    lag = histogram_quantiles(text, "tandem_kv_event_lag_seconds", (0.5, 0.99))
    if lag is None:
        return []
    return [
        f"KV events reached the precise index {lag[0] * 1000:.1f} ms (p50) and "
        f"{lag[1] * 1000:.1f} ms (p99) after their pods published them (wall time, "
        "upper bucket bounds)"
    ]


def target_label(target: str, label: str | None = None) -> str:
    """What a run against an existing deployment is called: `label`, else the target's host
    and port (whatever it runs, it is not one of tandem's policies)."""
    if label:
        return label
    address = urlsplit(target)
    return address.netloc or target.rstrip("/")


def run_bench(options: BenchOptions) -> BenchResults:
    """Run every (cluster, policy) pair on the same requests and write the results."""
    workload = options.workload
    prompts = build_prompts(workload)
    stages = schedule(workload, quick=options.quick)
    requests = build_requests(workload, prompts, stages)
    ceilings = hit_rate_ceilings(prompts, requests)
    runs: list[RunResult] = []
    if workload.engine_profiles and not options.target:
        raise WorkloadError(
            f"{workload.name}: engine_profiles (a profile per pool) is supported by tandem plan "
            "only; tandem bench starts every pod with engine_profile"
        )
    with progress_bars() as progress:
        pairs = (
            [("target", target_label(options.target, options.label))]
            if options.target
            else [(c, p) for c in options.clusters for p in options.policies]
        )
        for cluster_name, policy in pairs:
            label = f"{cluster_name} / {policy}"
            notes: list[str] = []
            if options.target:
                records, cpu, desired = _run_one(
                    options.target.rstrip("/"),
                    workload.model,
                    requests,
                    prompts,
                    options,
                    progress,
                    label,
                )
                shape: dict[str, int] = {}
                gpus = workload.gpus
            else:
                cluster_shape = workload.clusters[cluster_name]
                spec = _spec(cluster_shape, workload, policy, options)
                run_dir = options.output / "runs" / f"{cluster_name}-{policy}"
                with LocalCluster(spec, run_dir) as cluster:
                    records, cpu, desired = _run_one(
                        cluster.url, None, requests, prompts, options, progress, label
                    )
                    notes = orchestrator_notes(cluster.url)
                shape = cluster_shape.model_dump(exclude_defaults=True)
                gpus = workload.gpus_of(cluster_shape)
            kv_bounds = (
                None
                if options.target
                else hit_rate_kv_bounds(
                    prompts, requests, kv_capacity(workload, workload.clusters[cluster_name])
                )
            )
            summaries = summarize_run(
                records, stages, workload, cpu, ceilings, kv_bounds, desired=desired.during
            )
            runs.append(
                RunResult.from_stages(
                    cluster=cluster_name,
                    shape=shape,
                    policy=policy,
                    gpus=gpus,
                    stages=summaries,
                    records=records,
                    notes=notes,
                )
            )
    results = BenchResults(
        workload=workload.name,
        model=workload.model,
        time_scale=options.time_scale,
        target=options.target,
        slo=SloTargets.of(workload.slo),
        reference={k: v.model_dump(exclude_none=True) for k, v in workload.reference.items()},
        runs=runs,
    )
    options.output.mkdir(parents=True, exist_ok=True)
    write_results(options.output / "results.json", results)
    write_markdown(options.output / "report.md", results)
    write_plots(options.output, results)
    return results
