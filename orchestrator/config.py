"""The orchestrator's configuration file: pools, scraping, gateway limits and the scheduler.

    model: meta-llama/Llama-3.1-8B-Instruct   # optional; otherwise read from the pods
    scheduler: tandem                          # a shipped config name, a file path, or inline
    endpoints:                                 # static discovery (local runs)
      - {name: prefill-0, host: 10.0.0.5, port: 8000, role: prefill}
      - {name: decode-0, host: 10.0.0.6, port: 8000, role: decode}
    kubernetes:                                # or: discover Ready pods by label
      selector: llm-d.ai/inference-serving=true,llm-d.ai/model=llama-8b
      namespace: serving                       # default: the orchestrator's own
      port: 8000
    reload: {interval_s: 5}                    # re-read this file; apply scheduler changes
    scrape: {interval_s: 0.5, staleness_s: 2.0}
    gateway: {port: 8000, max_in_flight_per_endpoint: 1024}
    circuit_breaker: {consecutive_failures: 5, open_s: 30, max_open_s: 300}
    admission: {max_queue_per_pool: 1024, max_wait_s: 2.0}
    grpc: {enabled: true, host: 0.0.0.0, port: 9002}   # the Pick API and gRPC health
    scaling: {profile: llama-3.1-8b-h100-tp1, ttft_s: 0.5, itl_s: 0.05}  # desired replicas
    rebalance: {prefill: {min: 1, max: 6}, decode: {min: 2, max: 7}}  # pods move between pools

Validated at start; a bad file stops the process with a message naming the field. While
running, a changed scheduler configuration is applied in place and an invalid one is refused
(`orchestrator/reload.py`); other changes need a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tandem.costmodel.capacity import DEFAULT_MAX_NUM_BATCHED_TOKENS
from tandem.costmodel.profiles import PROFILES
from tandem.discovery.config import KubernetesDiscoveryConfig
from tandem.discovery.endpoints import ROLE_LABEL, Endpoint
from tandem.errors import OrchestratorConfigError, SchedulerConfigError, field_problems
from tandem.http.tls import ClientTLS
from tandem.orchestrator.circuit_breaker import CircuitBreakerConfig
from tandem.orchestrator.scheduling.config import (
    EndpointPickerConfig,
    load_config_file,
    parse_config,
)

CONFIG_DIR = Path(__file__).parent / "configs"
SHIPPED_SCHEDULERS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticEndpoint(_Strict):
    """One pod, as a static discovery entry."""

    host: str
    port: int = Field(ge=1, le=65535)
    role: Literal["prefill", "decode", "both"]
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def endpoint(self) -> Endpoint:
        labels = {**self.labels, ROLE_LABEL: self.role}
        return Endpoint(self.name or f"{self.host}:{self.port}", self.host, self.port, labels)


class ScrapeConfig(_Strict):
    """Background polling of each pod's /metrics (never on the request path)."""

    interval_s: float = Field(0.5, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    staleness_s: float = Field(2.0, gt=0)
    """Metrics older than this earn no load advantage (llm-d's staleness threshold, 2 s)."""
    failures_before_unhealthy: int = Field(2, ge=1)
    """Consecutive failed scrapes after which a pod is excluded until a scrape succeeds."""


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)
    """Longest wait for an upstream's first byte and between bytes."""
    max_in_flight_per_endpoint: int = Field(1024, ge=1)
    """An endpoint with this many requests in flight from here is saturated."""
    retry_after_s: int = Field(1, ge=1)
    chars_per_token: float = Field(4.0, gt=0)
    """Prompt-length estimate when a request carries text (llm-d's estimate: 4 bytes)."""


class AdmissionConfig(_Strict):
    """Admission control (`orchestrator/admission.py`): how many requests may wait for a
    saturated pool, and for how long. When a pool counts as saturated is the scheduler
    configuration's `saturationDetector`."""

    max_queue_per_pool: int = Field(1024, ge=0)
    """Requests that may wait for each pool; 0 refuses at once when a pool is saturated."""
    max_wait_s: float = Field(2.0, gt=0)
    """Longest wait before a request is refused (429 queue_timeout); keep it under the TTFT
    target, which the wait is part of."""


class GrpcConfig(_Strict):
    """The gRPC server: tandem's Pick API (proto/tandem/v1/pick.proto) and grpc.health.v1."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9002, ge=0, le=65535)
    """llm-d's endpoint picker serves gRPC on 9002 (llm-d/llm-d-router: pkg/epp/server/
    options.go, `DefaultGrpcPort`); 0 takes any free port."""


class ReloadConfig(_Strict):
    interval_s: float = Field(5.0, gt=0)
    """How often the file (and a scheduler file it names) is checked for changes. Kubernetes
    updates a mounted ConfigMap within about a minute (kubelet sync period plus cache TTL)."""


DEFAULT_TTFT_S, DEFAULT_ITL_S = 0.5, 0.05
"""SLO targets the scaling signals size pools for: Dynamo's SLA planner's defaults
(ai-dynamo/dynamo: components/src/dynamo/planner/defaults.py, `SLAPlannerDefaults`)."""


SCALING_POOLS = ("prefill", "decode", "both")
"""The pools the scaling signals size: prefill-only pods, decode pods, aggregated pods."""


class ScalingConfig(_Strict):
    """Scaling signals (`orchestrator/scaling.py`): each pool's desired replicas, from the
    load the orchestrator sees and what a pod of `profile` sustains within the SLO."""

    profile: str
    """The engine profile the pods run (`tandem sim --list-profiles`): its step-time
    coefficients and KV capacity."""
    pool_profiles: dict[str, str] = Field(default_factory=dict)
    """Another profile for a pool whose pods differ (e.g. wider tensor parallelism in
    decode)."""
    time_scale: float = Field(1.0, gt=0)
    """Wall seconds per model second of the pods (simulated pods run with `--time-scale`)."""
    ttft_s: float = Field(DEFAULT_TTFT_S, gt=0)
    itl_s: float = Field(DEFAULT_ITL_S, gt=0)
    """SLO targets, wall seconds."""
    window_s: float = Field(30.0, gt=0)
    """The routed prompt tokens' rate is averaged over this long."""
    prefill_utilization: float = Field(0.8, gt=0, le=1)
    """Busy share a prefill pod is sized for: at 0.8 a queue waits about twice a prefill's
    own time (M/D/1), inside a TTFT target a few prefills long."""
    kv_utilization: float = Field(0.8, gt=0, le=1)
    """KV usage a decode pod is sized for, under Dynamo's load planner's scale-up threshold
    (0.9, `LoadPlannerDefaults.decode_kv_scale_up_threshold`) and the saturation detector's
    0.8."""
    max_num_batched_tokens: int = Field(DEFAULT_MAX_NUM_BATCHED_TOKENS, ge=1)
    """The pods' step token budget (vLLM's `--max-num-batched-tokens`)."""
    min_replicas: int = Field(1, ge=0)
    """Dynamo's planner keeps one pod per pool (`min_endpoint`)."""
    max_replicas: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _known_profile(self) -> ScalingConfig:
        unknown_pools = sorted(set(self.pool_profiles) - set(SCALING_POOLS))
        if unknown_pools:
            raise ValueError(f"pool_profiles: no pool {', '.join(unknown_pools)}; pools: "
                             f"{', '.join(SCALING_POOLS)}")  # fmt: skip
        for profile in (self.profile, *self.pool_profiles.values()):
            if profile not in PROFILES:
                known = ", ".join(sorted(PROFILES))
                raise ValueError(f"unknown engine profile {profile!r}; known: {known}")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas is above max_replicas")
        return self

    def profile_of(self, pool: str) -> str:
        return self.pool_profiles.get(pool, self.profile)


class RoleBounds(_Strict):
    """How many pods one pool may have while pods move between the pools."""

    min: int = Field(1, ge=1)
    """A pool keeps at least one pod: an empty pool says nothing of its own demand."""
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> RoleBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class RebalanceConfig(_Strict):
    """Moving pods between the prefill and decode pools as the mix of the load changes
    (`orchestrator/rebalance.py`); the two pools' pods add up to the same total throughout.
    Needs `scaling`, whose signals say what each pool needs."""

    prefill: RoleBounds
    decode: RoleBounds
    interval_s: float = Field(60.0, gt=0)
    """No move starts sooner than this after the last one started (model seconds for
    simulated pods)."""
    margin: float = Field(0.1, ge=0, lt=1)
    """A move must cut the bottleneck (the busier pool's load per pod) by this share, so
    that the split does not move on noise; one pod more in a pool of n cuts its load per
    pod by 1/(n+1), so keep it under that for the pools' sizes."""
    min_load: float = Field(1.0, ge=0)
    """Moves only while the busier pool's load per pod (1.0: every pod as busy as the SLO
    allows) is at least this: below it the pools meet the SLO as they are."""
    move_timeout_s: float = Field(600.0, gt=0)
    """A move not landed by then (the pod neither left nor came back in its new pool) is
    given up, and the split weighed again."""
    check_s: float = Field(2.0, gt=0)
    """How often a running orchestrator looks for a move."""
    sustain_s: float = Field(60.0, ge=0)
    """A move starts only once the load has asked for it for this long: a pod's drain and
    restart take about a minute, which a shorter shift does not repay."""


class OrchestratorConfig(_Strict):
    model: str | None = None
    scheduler: str | dict[str, Any] = "tandem"
    endpoints: tuple[StaticEndpoint, ...] = ()
    kubernetes: KubernetesDiscoveryConfig | None = None
    reload: ReloadConfig = Field(default_factory=ReloadConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    upstream_tls: ClientTLS = Field(default_factory=ClientTLS)
    """TLS (and mTLS) to the pods: requests to decode endpoints and every scrape."""
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    scaling: ScalingConfig | None = None
    """Export each pool's desired replicas; off without an engine profile."""
    rebalance: RebalanceConfig | None = None
    """Move pods between the prefill and decode pools within bounds; off unless given."""
    seed: int | None = None
    """Seeds the scheduler's tie-breaking, for repeatable benchmarks."""

    @model_validator(mode="after")
    def _one_discovery(self) -> OrchestratorConfig:
        if self.endpoints and self.kubernetes is not None:
            raise ValueError("give either endpoints (a static list) or kubernetes, not both")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> OrchestratorConfig:
        names = [e.endpoint().name for e in self.endpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate endpoint names: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _rebalance_reads_scaling(self) -> OrchestratorConfig:
        if self.rebalance is not None and self.scaling is None:
            raise ValueError("rebalance needs scaling (an engine profile): the scaling "
                             "signals say what each pool needs")  # fmt: skip
        return self

    def scheduler_config(self, base_dir: Path | None = None) -> EndpointPickerConfig:
        """The scheduler configuration this file names, loads or holds inline."""
        return load_scheduler(self.scheduler, base_dir)


def load_scheduler(
    reference: str | dict[str, Any], base_dir: Path | None = None
) -> EndpointPickerConfig:
    """A scheduler configuration: inline, a shipped name, or a file (relative to
    `base_dir`); raises OrchestratorConfigError naming what is wrong."""
    try:
        if isinstance(reference, dict):
            return parse_config(reference)
        if reference in SHIPPED_SCHEDULERS:
            return load_config_file(CONFIG_DIR / f"{reference}.yaml")
        path = Path(reference)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.exists():
            raise SchedulerConfigError(
                f"not a shipped config ({', '.join(SHIPPED_SCHEDULERS)}) "
                f"nor an existing file: {reference!r}"
            )
        return load_config_file(path)
    except SchedulerConfigError as exc:
        raise OrchestratorConfigError(f"scheduler: {exc}") from None


def parse_orchestrator_config(document: dict[str, Any]) -> OrchestratorConfig:
    try:
        return OrchestratorConfig.model_validate(document)
    except ValidationError as exc:
        raise OrchestratorConfigError(field_problems(exc.errors())) from None


def load_orchestrator_config(path: str | Path) -> OrchestratorConfig:
    """Read and validate an orchestrator configuration file."""
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise OrchestratorConfigError(f"{path}: cannot read: {exc}") from None
    if not isinstance(document, dict):
        raise OrchestratorConfigError(f"{path}: expected a YAML mapping at the top level")
    return parse_orchestrator_config(document)
