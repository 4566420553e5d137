"""From per-request records to per-stage figures: percentiles, throughput, SLO attainment,
goodput and prefix-cache hit rate, as defined in `tandem/bench/workloads/README.md`.

All times are model seconds. Everything here is pure: the runner passes in the records of one
stage and the counters it scraped, and gets back numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Literal, Protocol

import numpy as np

from tandem.bench.records import Percentiles, RequestRecord, StageSummary
from tandem.bench.workload import Stage, Workload

DEFAULT_LAG_LIMIT_S = 1.0
"""Generator lag p99 (model seconds) above which a stage counts as machine-limited.

The lowest rate in the shipped ladders is 3 requests/s (a mean gap of 0.33 s), so a request
sent a second late has been pushed past about three of its neighbours' arrival times: the
offered load is no longer the Poisson process the stage names."""

GOODPUT_THRESHOLD = 0.9

PREFIX_CACHE_HITS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits")
PREFIX_CACHE_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries")
"""Counter names as exposed (`_total`) and as a Prometheus parser names the family."""


def percentiles(values: Sequence[float]) -> Percentiles:
    """p50/p90/p99/mean with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return Percentiles(None, None, None, None)
    ordered = np.sort(np.asarray(values, dtype=np.float64))  # a stage's gaps: millions
    return Percentiles(
        p50=_quantile(ordered, 0.50),
        p90=_quantile(ordered, 0.90),
        p99=_quantile(ordered, 0.99),
        mean=math.fsum(values) / len(values),  # exactly rounded, whatever the order
    )


def _quantile(ordered: np.ndarray, q: float) -> float:
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    low, high = float(ordered[below]), float(ordered[above])
    return low + (high - low) * fraction


def meets_slo(
    record: RequestRecord, slo_ttft_s: float, slo_itl_s: float, slo_itl_p99_s: float | None = None
) -> bool:
    """Succeeded with TTFT and mean ITL (and, with a tail bound, its P99 inter-token gap)
    within target; one output token has no ITL to miss."""
    if not record.success or record.ttft_s is None or record.ttft_s > slo_ttft_s:
        return False
    mean_itl = record.mean_itl_s
    if mean_itl is not None and mean_itl > slo_itl_s:
        return False
    return slo_itl_p99_s is None or not record.itl_s or tail_itl_s(record) <= slo_itl_p99_s


def tail_itl_s(record: RequestRecord, quantile: float = 0.99) -> float:
    """The request's own P99 inter-token gap (linear interpolation, as `percentiles`)."""
    return _quantile(np.sort(np.asarray(record.itl_s, dtype=np.float64)), quantile)


def histogram_quantiles(
    text: str, family: str, quantiles: Sequence[float]
) -> tuple[float, ...] | None:
    """Quantiles of a Prometheus histogram in an exposition (summed over its series), each
    the upper bound of the bucket it falls in; None without observations."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[float, float] = {}
    for metric in text_string_to_metric_families(text):
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.name == f"{family}_bucket":
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    total = counts.get(math.inf, 0.0)
    if not total:
        return None
    bounds = sorted(counts)
    return tuple(next(bound for bound in bounds if counts[bound] >= q * total) for q in quantiles)


def summarize_stage(
    stage: int,
    rate: float,
    duration_s: float,
    records: Sequence[RequestRecord],
    slo_ttft_s: float,
    slo_itl_s: float,
    hit_rate: float | None,
    cpu_saturated: bool,
    lag_limit_s: float = DEFAULT_LAG_LIMIT_S,
    slo_itl_p99_s: float | None = None,
    hit_rate_ceiling: float | None = None,
    hit_rate_kv_bound: float | None = None,
) -> StageSummary:
    """One stage's figures from the records of the requests it scheduled.

    Throughput counts the stage's successful requests (and their prompt and output tokens)
    per second of the longer of the stage's duration and its completion window (first send
    to last completion, see `completion_window_s`): a system that keeps up finishes within
    the stage and shows the offered rate; one that falls behind finishes late and shows the
    lower rate it really sustained, as inference-perf reports it. Latency
    percentiles cover successful requests only; success rate and SLO attainment are shares
    of all the stage's requests.
    """
    if duration_s <= 0:
        raise ValueError(f"stage {stage}: duration must be positive, got {duration_s}")
    strays = sorted({r.stage for r in records if r.stage != stage})
    if strays:
        raise ValueError(f"stage {stage}: records of other stages {strays} passed in")
    succeeded = [r for r in records if r.success]
    requests = len(records)
    input_tokens = sum(r.prompt_tokens for r in succeeded)
    output_tokens = sum(r.output_tokens for r in succeeded)
    good = sum(meets_slo(r, slo_ttft_s, slo_itl_s) for r in records)
    ttft_met = sum(meets_slo(r, slo_ttft_s, math.inf) for r in records)
    tpot_met = sum(meets_slo(r, math.inf, slo_itl_s) for r in records)
    tail_attainment = None
    if slo_itl_p99_s is not None:
        tail_good = sum(meets_slo(r, slo_ttft_s, slo_itl_s, slo_itl_p99_s) for r in records)
        tail_attainment = tail_good / requests if requests else 0.0
    rejected = sum(1 for r in records if r.reject_reason is not None)
    admitted = requests - rejected
    window = max(duration_s, completion_window_s(records) or 0.0)
    lag = percentiles([r.lag_s for r in records]).p99
    lag_p99 = lag if lag is not None else 0.0
    return StageSummary(
        stage=stage,
        rate=rate,
        duration_s=duration_s,
        requests=requests,
        completed=len(succeeded),
        success_rate=len(succeeded) / requests if requests else 0.0,
        requests_per_s=len(succeeded) / window,
        input_tokens_per_s=input_tokens / window,
        output_tokens_per_s=output_tokens / window,
        total_tokens_per_s=(input_tokens + output_tokens) / window,
        ttft_s=percentiles([r.ttft_s for r in succeeded if r.ttft_s is not None]),
        itl_s=percentiles([gap for r in succeeded for gap in r.itl_s]),
        e2e_s=percentiles([r.e2e_s for r in succeeded if r.e2e_s is not None]),
        slo_attainment=good / requests if requests else 0.0,
        hit_rate=hit_rate,
        generator_lag_p99_s=lag_p99,
        machine_limited=cpu_saturated or lag_p99 > lag_limit_s,
        tail_slo_attainment=tail_attainment,
        p90_slo_attainment=min(ttft_met, tpot_met) / requests if requests else 0.0,
        rejected=rejected,
        admitted_slo_attainment=good / admitted if admitted else None,
        hit_rate_ceiling=hit_rate_ceiling,
        hit_rate_kv_bound=hit_rate_kv_bound,
    )


def completion_window_s(records: Sequence[RequestRecord]) -> float | None:
    """First send to last successful completion: the denominator inference-perf divides by.

    The published llm-d figures (e.g. 14.41 requests/s at the rate-60 stage) are counts over
    this window, not over the stage's nominal duration, so compare with them using this.
    """
    ends = [r.sent_s + r.e2e_s for r in records if r.success and r.e2e_s is not None]
    if not ends:
        return None
    window = max(ends) - min(r.sent_s for r in records)
    return window if window > 0 else None


SloForm = Literal["mean", "tail", "p90"]
"""How a stage is judged: `mean`, each request's TTFT and mean ITL within target; `tail`, its
own P99 gap as well; `p90`, DistServe's form, the stage's P90 TTFT and P90 per-request TPOT
(mean ITL) each within target."""


def goodput(
    summaries: Sequence[StageSummary],
    threshold: float = GOODPUT_THRESHOLD,
    *,
    form: SloForm = "mean",
) -> float:
    """The highest rate at which SLO attainment (under the SLO `form`) holds at `threshold`,
    interpolated linearly.

    Stages are walked in increasing rate and the walk stops at the first stage below the
    threshold: a later stage that meets it again does not count, since attainment that
    recovers under more load is noise, not capacity. If the lowest stage already misses,
    goodput is 0: nothing measured meets the SLO, and assuming full attainment at zero load
    would credit a system whose unloaded ITL alone misses the target.
    """
    ladder = sorted(summaries, key=lambda s: s.rate)

    def attainment(summary: StageSummary) -> float:
        if form == "mean":
            return summary.slo_attainment
        value = summary.tail_slo_attainment if form == "tail" else summary.p90_slo_attainment
        if value is None:
            raise ValueError(f"stage {summary.stage} was not judged under the {form} SLO form")
        return value

    previous: StageSummary | None = None
    for summary in ladder:
        if attainment(summary) < threshold:
            if previous is None:
                return 0.0
            drop = attainment(previous) - attainment(summary)
            fraction = (attainment(previous) - threshold) / drop
            return previous.rate + fraction * (summary.rate - previous.rate)
        previous = summary
    return previous.rate if previous is not None else 0.0


def hit_rate_from_counters(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """Prefix-cache hits / queries over the interval between two scrapes, None without queries.

    Keys are Prometheus series, `name` or `name{labels}`, one per pod and series (make them
    unique per pod, e.g. with a `pod` label); the hits and queries series are summed. A series
    whose value went down was reset (its pod restarted) and counts from zero.
    """
    hits = _counter_delta(before, after, PREFIX_CACHE_HITS)
    queries = _counter_delta(before, after, PREFIX_CACHE_QUERIES)
    if queries <= 0:
        return None
    return hits / queries


def _counter_delta(
    before: Mapping[str, float], after: Mapping[str, float], names: Sequence[str]
) -> float:
    total = 0.0
    for series, value in after.items():
        if series.partition("{")[0] not in names:
            continue
        delta = value - before.get(series, 0.0)
        total += value if delta < 0 else delta
    return total


CPU_SATURATED = 0.95
"""Average busy share of all CPUs above which a stage is flagged as machine-limited."""


class BusyShare(Protocol):
    """What the CPU sampler of a live run tells: the machine's busy share over a span."""

    def busy_between(self, start: float, end: float) -> float | None: ...


StageDesiredReplicas = Callable[[int, float, float], dict[str, float] | None]
"""Each pool's mean desired replicas during a stage, given the stage and its span (start,
end): sampled by time in a live run, by stage in virtual time."""


def hit_rate(records: Sequence[RequestRecord]) -> float | None:
    served = [r for r in records if r.success and r.cached_tokens is not None]
    prompt = sum(r.prompt_tokens for r in served)
    return sum(r.cached_tokens or 0 for r in served) / prompt if prompt else None


def summarize_run(
    records: Sequence[RequestRecord],
    stages: Sequence[tuple[int, Stage]],
    workload: Workload,
    cpu: BusyShare | None,
    ceilings: Mapping[int, float] | None = None,
    kv_bounds: Mapping[int, float] | None = None,
    desired: StageDesiredReplicas | None = None,
) -> list[StageSummary]:
    """Per-stage summaries; `cpu` (absent in virtual time) flags machine-limited stages;
    `ceilings` and `kv_bounds` are the stages' hit-rate ceilings and bounds
    (`tandem.bench.ceilings`); `desired`, the orchestrator's desired replicas per pool over each
    stage."""
    summaries = []
    start = 0.0
    for index, stage in stages:
        end = start + stage.duration
        if index >= 0:
            in_stage = [r for r in records if r.stage == index]
            busy = cpu.busy_between(start, end) if cpu is not None else None
            summary = summarize_stage(
                stage=index,
                rate=stage.rate,
                duration_s=stage.duration,
                records=in_stage,
                slo_ttft_s=workload.slo.ttft_ms / 1000,
                slo_itl_s=workload.slo.itl_ms / 1000,
                slo_itl_p99_s=workload.slo.itl_p99_s,
                hit_rate=hit_rate(in_stage),
                cpu_saturated=busy is not None and busy >= CPU_SATURATED,
                hit_rate_ceiling=(ceilings or {}).get(index),
                hit_rate_kv_bound=(kv_bounds or {}).get(index),
            )
            if desired is not None:
                summary = replace(summary, desired_replicas=desired(index, start, end))
            summaries.append(summary)
        start = end
    return summaries
