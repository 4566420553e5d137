"""Scaling signals: how many pods each pool needs for the load it sees, within the SLO.

The orchestrator sees every request it routes and every pod's scraped metrics, and the
step-time model (`costmodel/`) says what one pod of the configured engine profile sustains.
From both, for each pool (`prefill`, `decode`, and `both` for aggregated pods), the pods
needed by each signal, as fractions of a pod:

- `prefill_rate`: uncached prompt tokens routed to the pool per second (over `window_s`)
  against one pod's prefill rate at the observed prompt length, kept at
  `prefill_utilization` so that queueing stays well inside the TTFT target;
- `prefill_backlog`: prompt tokens routed to the pool and not yet prefilled (the
  orchestrator's in-flight count, current at every request) against what the pool must
  clear within the TTFT target: the signal that rises as soon as a queue grows;
- `kv`: the pool's KV usage (the sum of its pods' `vllm:kv_cache_usage_perc`) against
  `kv_utilization` of each pod;
- `itl`: the pool's running sequences and the context they read, spread over as many pods
  as keep one decode step within the ITL target.

The orchestrator counts prompt tokens before any pod has tokenized them (about 4 characters
a token, `gateway.chars_per_token`, unless it tokenizes), so both prefill signals are
calibrated by each pool's own count: the prompt tokens its pods report computing
(`vllm:prompt_tokens_by_source{source="local_compute"}`) over those the orchestrator
predicted for the prefills that have ended there, since it started (held within 1/4 and 4,
and 1 until `CALIBRATION_MIN_TOKENS` have been predicted).

A prefill pod only prefills; a decode or aggregated pod decodes, and prefills what is routed
to it whole. A pool's desired replicas are its prefill need (the larger of rate and backlog)
plus its decode need (the larger of KV and ITL), rounded up and held within
[`min_replicas`, `max_replicas`]. The orchestrator exports them as gauges for a
HorizontalPodAutoscaler or KEDA to act on, which add their own stabilization windows. Pure:
it reads endpoint states and the requests it is told of.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from tandem.costmodel.capacity import decode_pods_for_itl, prefill_tokens_per_s, scaled
from tandem.costmodel.profiles import StepCoefficients, get_profile
from tandem.discovery.endpoints import Endpoint, Role
from tandem.orchestrator.config import SCALING_POOLS, ScalingConfig
from tandem.orchestrator.endpoints import EndpointState
from tandem.orchestrator.scheduling.saturation import PREFILL_POOL_ROLES
from tandem.orchestrator.scheduling.types import EngineMetrics

POOLS = SCALING_POOLS
SIGNALS = ("prefill_rate", "prefill_backlog", "kv", "itl")
CALIBRATION_MIN_TOKENS = 50_000
"""Predicted tokens of ended prefills a pool needs before its calibration is trusted: a
dozen long prompts, so that one scrape's lag does not swing it."""
CALIBRATION_BOUNDS = (0.25, 4.0)


def pool_of(endpoint: Endpoint) -> str:
    """The pool an endpoint scales with: prefill-only pods, decode pods, or the rest."""
    if endpoint.role in PREFILL_POOL_ROLES:
        return "prefill"
    return "decode" if endpoint.role == Role.DECODE else "both"


@dataclass(frozen=True, slots=True)
class PoolNeeds:
    """One pool's replicas now, what each signal needs (fractions of a pod) and the result."""

    pool: str
    replicas: int
    desired: int
    needs: dict[str, float]
    """Pods needed by each of `SIGNALS`."""
    prefill_tokens_per_s: float
    """Uncached prompt tokens routed to the pool per second, over the window."""
    pod_prefill_tokens_per_s: float
    """What one pod prefills per second at the window's mean prompt length."""
    token_ratio: float = 1.0
    """Prompt tokens the pool's pods computed per token the orchestrator predicted."""

    @property
    def load(self) -> float:
        """Pods the pool needs, unrounded: its prefill need plus its decode need."""
        n = self.needs
        return max(n["prefill_rate"], n["prefill_backlog"]) + max(n["kv"], n["itl"])


@dataclass(slots=True)
class ScalingSignal:
    config: ScalingConfig
    _steps: dict[str, StepCoefficients] = field(init=False)
    _kv_capacity_tokens: dict[str, int] = field(init=False)
    """Each pool's profile: step-time coefficients (at the pods' time scale), KV tokens."""
    _routed: deque[tuple[float, str, int]] = field(default_factory=deque)
    """(when, pool, uncached prompt tokens) of the requests routed within the window."""
    _first_routed_s: float | None = None
    _computed: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    """Each endpoint's pool and its computed-prompt-tokens counter: first and last seen."""
    _retired: dict[str, float] = field(default_factory=dict)
    """Prompt tokens computed by endpoints since gone (or restarted), by pool."""
    _predicted: dict[str, float] = field(default_factory=dict)
    """Uncached prompt tokens the orchestrator predicted for prefills that ended, by pool."""

    def __post_init__(self) -> None:
        profiles = {pool: get_profile(self.config.profile_of(pool)) for pool in POOLS}
        self._steps = {p: scaled(e.step, self.config.time_scale) for p, e in profiles.items()}
        self._kv_capacity_tokens = {p: e.kv_capacity_tokens for p, e in profiles.items()}

    def record_prefill(self, pool: str, tokens: int, now: float) -> None:
        """A request was routed whose `tokens` uncached prompt tokens `pool` prefills."""
        if self._first_routed_s is None:
            self._first_routed_s = now
        self._routed.append((now, pool, max(0, tokens)))
        self._forget(now)

    def record_prefilled(self, pool: str, tokens: int) -> None:
        """A prefill the orchestrator predicted at `tokens` uncached prompt tokens ended."""
        self._predicted[pool] = self._predicted.get(pool, 0.0) + tokens

    def observe_scrape(self, endpoint: Endpoint, metrics: EngineMetrics) -> None:
        """A scrape's count of the prompt tokens the pod has computed, where it reports one."""
        counter = metrics.computed_prompt_tokens
        if counter is None:
            return
        known = self._computed.get(endpoint.name)
        if known is not None and counter >= known[2]:
            self._computed[endpoint.name] = (known[0], known[1], counter)
            return
        if known is not None:  # the pod restarted: keep what it counted before
            self.forget_endpoint(endpoint.name)
        self._computed[endpoint.name] = (pool_of(endpoint), counter, counter)

    def forget_endpoint(self, name: str) -> None:
        known = self._computed.pop(name, None)
        if known is not None:
            pool, first, last = known
            self._retired[pool] = self._retired.get(pool, 0.0) + last - first

    def token_ratio(self, pool: str) -> float:
        """Prompt tokens the pool's pods computed per token the orchestrator predicted."""
        predicted = self._predicted.get(pool, 0.0)
        computed = self._retired.get(pool, 0.0) + sum(
            last - first for where, first, last in self._computed.values() if where == pool
        )
        if predicted < CALIBRATION_MIN_TOKENS or computed <= 0:
            return 1.0
        low, high = CALIBRATION_BOUNDS
        return min(high, max(low, computed / predicted))

    def needs(self, states: Iterable[EndpointState], now: float) -> dict[str, PoolNeeds]:
        """Each pool that has endpoints: its replicas, needs and desired replicas."""
        self._forget(now)
        members: dict[str, list[EndpointState]] = {}
        for state in states:
            members.setdefault(pool_of(state.endpoint), []).append(state)
        return {pool: self._pool(pool, members[pool], now) for pool in POOLS if pool in members}

    def _pool(self, pool: str, states: list[EndpointState], now: float) -> PoolNeeds:
        c = self.config
        ratio = self.token_ratio(pool)
        routed = [tokens * ratio for _, where, tokens in self._routed if where == pool]
        demand = sum(routed) / self._span(now)
        mean_prompt = sum(routed) / len(routed) if routed else 1
        step = self._steps[pool]
        pod_rate = prefill_tokens_per_s(step, round(mean_prompt), c.max_num_batched_tokens)
        backlog = ratio * sum(state.in_flight_tokens for state in states)
        needs = {
            "prefill_rate": demand / (pod_rate * c.prefill_utilization),
            "prefill_backlog": backlog / (pod_rate * c.ttft_s),
            "kv": 0.0,
            "itl": 0.0,
        }
        if pool != "prefill":
            # Pods that stopped answering scrapes say nothing of the load now.
            scraped = [s.metrics for s in states if s.healthy and s.metrics is not None]
            running = sum(m.running for m in scraped)
            pod_tokens = self._kv_capacity_tokens[pool]  # where a pod does not say its own
            context = sum(m.kv_usage * (m.kv_capacity_tokens or pod_tokens) for m in scraped)
            needs["kv"] = sum(m.kv_usage for m in scraped) / c.kv_utilization
            needs["itl"] = decode_pods_for_itl(step, running, round(context), c.itl_s)
        result = PoolNeeds(
            pool=pool,
            replicas=len(states),
            desired=0,
            needs=needs,
            prefill_tokens_per_s=demand,
            pod_prefill_tokens_per_s=pod_rate,
            token_ratio=ratio,
        )
        total = result.load
        # A hair under a whole pod is that pod: float error must not add one.
        desired = c.max_replicas if math.isinf(total) else math.ceil(total - 1e-9)
        return dataclasses.replace(
            result, desired=min(c.max_replicas, max(c.min_replicas, desired))
        )

    def _span(self, now: float) -> float:
        """The seconds the demand is averaged over: the window, or less just after start."""
        if self._first_routed_s is None:
            return self.config.window_s
        return max(1.0, min(self.config.window_s, now - self._first_routed_s))

    def _forget(self, now: float) -> None:
        horizon = now - self.config.window_s
        while self._routed and self._routed[0][0] < horizon:
            self._routed.popleft()
