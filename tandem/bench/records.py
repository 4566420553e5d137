"""What a benchmark run records: one record per request, one summary per stage.

All times are model seconds (wall seconds divided by the run's time scale), so a run on a
slowed-down simulated cluster reports what the modelled hardware would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    """One request as the load generator saw it."""

    request_id: str
    stage: int
    """Index into the workload's stages; -1 for warm-up requests (not reported)."""
    scheduled_s: float
    """When the schedule said to send it, from the start of the run."""
    sent_s: float
    """When it was actually sent (later than scheduled if the generator fell behind)."""
    prompt_tokens: int
    max_tokens: int
    group: int | None = None
    success: bool = False
    status: int | None = None
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    """Gaps between consecutive output chunks after the first."""
    cached_tokens: int | None = None
    """usage.prompt_tokens_details.cached_tokens, when the server reports it."""
    reject_reason: str | None = None
    """Set when the orchestrator refused the request without serving it (its
    `x-tandem-reject-reason`: admission control's 429s, 503 when no pod can take it)."""

    @property
    def mean_itl_s(self) -> float | None:
        return sum(self.itl_s) / len(self.itl_s) if self.itl_s else None

    @property
    def lag_s(self) -> float:
        """How late the generator sent it."""
        return self.sent_s - self.scheduled_s


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None


@dataclass(frozen=True, slots=True)
class StageSummary:
    """One stage of one run (cluster shape x policy)."""

    stage: int
    rate: float
    duration_s: float
    requests: int
    completed: int
    success_rate: float
    requests_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    ttft_s: Percentiles
    itl_s: Percentiles
    e2e_s: Percentiles
    slo_attainment: float
    """Share of the stage's requests that succeeded within the TTFT and mean-ITL targets."""
    hit_rate: float | None
    """Prefix-cache hits / queries over the pods that ran prefills, during the stage."""
    generator_lag_p99_s: float
    """How late the load generator sent its requests (model seconds, p99)."""
    machine_limited: bool
    """True when the generator fell behind its schedule or the CPU was saturated: the stage
    measured the machine, not the system under test."""
    tail_slo_attainment: float | None = None
    """Share of the stage's requests that also kept their P99 inter-token gap within the
    workload's tail bound; None when the workload sets none."""
    p90_slo_attainment: float | None = None
    """DistServe's form: the smaller of the shares of the stage's requests that succeeded
    within the TTFT target and within the mean-ITL (TPOT) target, each judged alone; at 0.9 or
    above, the stage's P90 TTFT and P90 TPOT meet their targets. None in older results."""
    rejected: int = 0
    """Requests the orchestrator refused with a reason (429/503 `x-tandem-reject-reason`)."""
    admitted_slo_attainment: float | None = None
    """SLO attainment of the requests that were not refused: what admission control keeps;
    None when every request was refused."""
    hit_rate_ceiling: float | None = None
    """The most `hit_rate` could be with an unbounded cache (`tandem.bench.ceilings`); None without
    shared prefixes."""
    hit_rate_kv_bound: float | None = None
    """What `hit_rate` could be with the cluster's KV capacity (`tandem.bench.ceilings`)."""
    desired_replicas: dict[str, float] | None = None
    """Mean of the orchestrator's desired replicas per pool over the stage, as its scaling
    signals said (`tandem plan` and `tandem bench` sample them); None where not sampled."""
