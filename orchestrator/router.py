"""The routing core every face of the orchestrator shares: endpoints, scheduling, load.

`Router` owns the endpoint store and the scheduler: discovery and scrapes update it, each
request is scheduled against a snapshot of it, and the requests in flight to each endpoint
are counted until their answers end. It does no I/O, so the HTTP gateway and the
virtual-time planner (`planner/`) drive the very same object, with a wall or a virtual clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tandem.discovery.endpoints import Endpoint, Role
from tandem.errors import OpenAIError, SchedulingError
from tandem.logs import EventLog
from tandem.orchestrator.circuit_breaker import BreakerState
from tandem.orchestrator.config import OrchestratorConfig
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.rebalance import POOLS as REBALANCED
from tandem.orchestrator.rebalance import Move, Rebalancer
from tandem.orchestrator.scaling import PoolNeeds, ScalingSignal, pool_of
from tandem.orchestrator.scheduling.saturation import (
    PREFILL_POOL_ROLES,
    SaturationDetector,
    in_prefill_pool,
)
from tandem.orchestrator.scheduling.scheduler import Scheduler
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    EngineMetrics,
    SchedulingRequest,
    SchedulingResult,
)

logger = EventLog(__name__)


@dataclass(slots=True)
class Loads:
    """What one routed request adds to the endpoints' in-flight counts."""

    decode: str
    prefill: str | None
    tokens: int
    prefill_done: bool = False
    pool: str | None = None
    """The pool that prefills it, where the scaling signals count it."""
    probes: set[str] = field(default_factory=set)
    """Endpoints whose half-open circuit breaker this request probes, until its outcome
    there is known."""


@dataclass(frozen=True, slots=True)
class PoolState:
    """One pool as admission sees it: how many endpoints can take requests, and which of
    them are saturated."""

    endpoints: int
    saturated: frozenset[str]
    warming_up: int = 0
    """Endpoints discovered but not scraped yet (an orchestrator just started): worth
    waiting for rather than refusing."""

    @property
    def open(self) -> bool:
        """Whether some endpoint of the pool has room."""
        return self.endpoints > len(self.saturated)


@dataclass(frozen=True, slots=True)
class Pools:
    decode: PoolState
    prefill: PoolState


@dataclass(slots=True)
class Router:
    config: OrchestratorConfig
    scheduler: Scheduler
    store: EndpointStore
    metrics: GatewayMetrics
    clock: Callable[[], float]
    capacity_listener: Callable[[], None] | None = None
    """Called whenever room may have opened (a request's prefill or answer ended, a scrape
    came in, the endpoints changed): admission's cue to place waiting requests."""
    scaling: ScalingSignal | None = field(init=False)
    """Each pool's desired replicas, where the configuration names the pods' profile."""
    rebalancer: Rebalancer | None = field(init=False)
    """Which way the P:D split should move, where the configuration asks for moves."""

    def __post_init__(self) -> None:
        scaling, rebalance = self.config.scaling, self.config.rebalance
        self.scaling = None if scaling is None else ScalingSignal(scaling)
        self.rebalancer = None if rebalance is None else Rebalancer(rebalance)

    @property
    def encodes_sessions(self) -> bool:
        """Whether responses carry the session header the affinity plugin reads back."""
        return self.scheduler.encodes_sessions

    def replace_scheduler(self, scheduler: Scheduler) -> None:
        """Switch to a reloaded configuration's scheduler between two requests."""
        kept = scheduler.inherit(self.scheduler)
        self.scheduler = scheduler
        for endpoint in self.store.endpoints():
            state = self.store.state(endpoint.name)
            if state is not None and state.metrics is not None:
                self.on_scrape(endpoint, state.metrics, None)
        logger.info("scheduler_replaced", prefix_index_kept=kept)

    # -- endpoints ------------------------------------------------------------------------

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        added, removed = self.store.set_endpoints(endpoints)
        for name in removed:
            self.scheduler.forget_endpoint(name)
            self.metrics.forget_endpoint(name)
            if self.scaling is not None:
                self.scaling.forget_endpoint(name)
        if added or removed:
            logger.info("endpoints_changed", added=added, removed=removed)
        self._capacity_changed()

    def on_scrape(
        self, endpoint: Endpoint, metrics: EngineMetrics | None, error: str | None
    ) -> None:
        if error is not None:
            self.metrics.scrape_errors.labels(endpoint.name).inc()
            return
        capacity = None if metrics is None else metrics.kv_capacity_tokens
        if capacity is not None:
            self.scheduler.endpoint_capacity(endpoint.name, capacity)
        if metrics is not None and self.scaling is not None:
            self.scaling.observe_scrape(endpoint, metrics)
        self._capacity_changed()

    def pool_needs(self) -> dict[str, PoolNeeds]:
        """Each pool's replicas and desired replicas now; empty without scaling signals."""
        if self.scaling is None:
            return {}
        return self.scaling.needs(self.store.states(), self.clock())

    def rebalance(self) -> Move | None:
        """Look once for a pod move between the pools: the move to start now (counted,
        logged, and the pools' target split, `tandem_pool_target_replicas`, set to the split
        after it), or None. Nothing new starts while the last move is under way."""
        rebalancer = self.rebalancer
        if rebalancer is None:
            return None
        needs, now = self.pool_needs(), self.clock()
        split = {pool: needs[pool].replicas if pool in needs else 0 for pool in REBALANCED}
        if rebalancer.under_way(split, now):
            return None
        if rebalancer.target is not None:  # landed, or given up: the split is the target
            if rebalancer.target != split:
                logger.warning("pool_move_given_up", target=rebalancer.target, split=split)
            rebalancer.target = None
            for pool, count in split.items():
                self.metrics.pool_target.labels(pool).set(count)
        move = rebalancer.propose(needs, now)
        if move is None:
            return None
        for pool, count in rebalancer.start(move, split, now).items():
            self.metrics.pool_target.labels(pool).set(count)
        self.metrics.pool_moves.labels(move.source, move.target, move.reason).inc()
        logger.info(
            "pool_move", source=move.source, target=move.target, reason=move.reason,
            load_per_pod=f"{move.load_per_pod:.2f}",
            load_per_pod_after=f"{move.load_per_pod_after:.2f}",
        )  # fmt: skip
        return move

    def refresh_gauges(self) -> None:
        now = self.clock()
        for pool, needs in self.pool_needs().items():
            self.metrics.pool_replicas.labels(pool).set(needs.replicas)
            self.metrics.desired_replicas.labels(pool).set(needs.desired)
            for signal, value in needs.needs.items():
                self.metrics.replicas_needed.labels(pool, signal).set(value)
            self.metrics.pool_prefill_rate.labels(pool).set(needs.prefill_tokens_per_s)
            self.metrics.pod_prefill_rate.labels(pool).set(needs.pod_prefill_tokens_per_s)
            self.metrics.token_ratio.labels(pool).set(needs.token_ratio)
        precise = self.scheduler.precise
        if precise is not None:
            self.metrics.precise_index_blocks.set(precise.index.num_hashes)
            for name in precise.index.endpoints():
                synced = precise.index.authoritative(name, now)
                self.metrics.precise_index_synced.labels(name).set(1 if synced else 0)
        for endpoint in self.store.endpoints():
            state = self.store.state(endpoint.name)
            if state is None:
                continue
            self.metrics.endpoint_healthy.labels(endpoint.name).set(1 if state.healthy else 0)
            self.metrics.in_flight.labels(endpoint.name).set(state.in_flight)
            self.metrics.breaker_state.labels(endpoint.name).set(state.breaker.state(now))
            if state.metrics is not None:
                age = now - state.metrics.scraped_at
                self.metrics.metrics_age.labels(endpoint.name).set(age)

    # -- scheduling -----------------------------------------------------------------------

    def pools(self, now: float, exclude: frozenset[str] = frozenset()) -> Pools:
        """The decode and prefill pools' room, by the scheduler's saturation detector."""
        detector = SaturationDetector(
            self.scheduler.saturation, self.config.gateway.max_in_flight_per_endpoint
        )
        members: dict[bool, list[str]] = {True: [], False: []}
        saturated: dict[bool, set[str]] = {True: set(), False: set()}
        for view in self.store.views(now):
            if view.name in exclude:
                continue
            prefill_only = in_prefill_pool(view)
            members[prefill_only].append(view.name)
            if detector.saturated(view):
                saturated[prefill_only].add(view.name)
        warming: dict[bool, int] = {True: 0, False: 0}
        for endpoint in self.store.warming_up():
            if endpoint.name not in exclude:
                warming[endpoint.role in PREFILL_POOL_ROLES] += 1
        decode, prefill = (
            PoolState(len(members[key]), frozenset(saturated[key]), warming[key])
            for key in (False, True)
        )
        return Pools(decode, prefill)

    def schedule(
        self,
        request: SchedulingRequest,
        exclude: frozenset[str] = frozenset(),
        *,
        record: bool = True,
    ) -> SchedulingResult:
        """Pick endpoints; raises OpenAIError (429 saturated, 503 none) when none can take
        the request. Without `record`, only looks where it would go (nothing remembered,
        nothing counted)."""
        now = self.clock()
        views = [v for v in self.store.views(now) if v.name not in exclude]
        limit = self.config.gateway.max_in_flight_per_endpoint
        open_views = [v for v in views if v.in_flight < limit]
        started = time.perf_counter()
        try:
            saturated = any(can_decode(v) for v in views) and not any(
                can_decode(v) for v in open_views
            )
            if saturated:
                raise SchedulingError(
                    429,
                    f"every decode endpoint has {limit} requests in flight; retry later",
                    "saturated",
                )
            result = self.scheduler.schedule(request, open_views, now, record=record)
        except SchedulingError as exc:
            self.metrics.rejections.labels(exc.reason).inc()
            known, healthy = self.store.counts(now)
            message = exc.message
            if exc.status == 503:
                message = f"{message}; {healthy} of {known} endpoints are healthy"
            headers = {"retry-after": str(self.config.gateway.retry_after_s)}
            raise OpenAIError(
                exc.status,
                message,
                headers=headers,
                reject_reason="saturated" if exc.status == 429 else "no_endpoints",
            ) from None
        finally:
            self.metrics.scheduling_duration.observe(time.perf_counter() - started)
        if not record:
            return result
        self.metrics.pd_decisions.labels(result.decision.value, result.reason).inc()
        self.metrics.picks.labels(result.decode.profile, result.decode.best.name).inc()
        if result.prefill is not None and result.prefill_targets:
            prefill = result.prefill_targets[0].name
            self.metrics.picks.labels(result.prefill.profile, prefill).inc()
        return result

    def client_fields_dropped(self, request_id: str, fields: Sequence[str]) -> None:
        """Count and log the fields only tandem may set that a client sent (and that were
        removed from its body before it went on)."""
        for name in fields:
            self.metrics.client_fields_dropped.labels(name).inc()
            logger.warning("client_field_dropped", request_id=request_id, field=name)

    # -- load accounting ------------------------------------------------------------------

    def acquire(self, request: SchedulingRequest, result: SchedulingResult) -> Loads:
        """Count the request against the endpoints it was routed to: one request on each,
        and its uncached prompt tokens on the one that prefills until its first byte."""
        decode = result.decode.best.name
        prefill = result.prefill_targets[0].name if result.prefill_targets else None
        tokens = result.uncached_tokens
        if tokens is None:
            tokens = request.num_prompt_tokens
        now = self.clock()
        loads = Loads(decode, prefill, tokens)
        if self.scaling is not None:
            prefilling = self.store.state(prefill or decode)
            if prefilling is not None:
                loads.pool = pool_of(prefilling.endpoint)
                self.scaling.record_prefill(loads.pool, tokens, now)
        if self.store.acquire(decode, 0 if prefill else tokens, now):
            loads.probes.add(decode)
        if prefill and self.store.acquire(prefill, tokens, now):
            loads.probes.add(prefill)
        return loads

    def record_outcome(self, loads: Loads | None, endpoint: str, served: bool) -> None:
        """Whether `endpoint` served its part of a request (a failure: refused, timed out,
        broke off, or answered 5xx), for its circuit breaker."""
        if loads is not None:
            loads.probes.discard(endpoint)
        change = self.store.record_outcome(endpoint, served, self.clock())
        if change is BreakerState.OPEN:
            self.metrics.breaker_opened.labels(endpoint).inc()
            state = self.store.state(endpoint)
            open_s = state.breaker.open_for_s if state is not None else 0.0
            logger.warning("circuit_opened", endpoint=endpoint, open_s=f"{open_s:.1f}")
        elif change is BreakerState.CLOSED:
            logger.info("circuit_closed", endpoint=endpoint)

    def prefill_done(self, loads: Loads, *, computed: bool = True) -> None:
        """The first byte came back (`computed`), or the request ended without one: the
        prompt no longer loads whoever prefilled it."""
        if not loads.prefill_done:
            loads.prefill_done = True
            self.store.release_tokens(loads.prefill or loads.decode, loads.tokens)
            if loads.prefill:
                self.store.release(loads.prefill)
            if computed and self.scaling is not None and loads.pool is not None:
                self.scaling.record_prefilled(loads.pool, loads.tokens)
            self._capacity_changed()

    def release(self, loads: Loads) -> None:
        """The answer ended (or failed)."""
        self.prefill_done(loads, computed=False)  # a no-op after a first byte
        self.store.release(loads.decode)
        for endpoint in loads.probes:
            self.store.abandon_probe(endpoint)
        loads.probes.clear()
        self._capacity_changed()

    def _capacity_changed(self) -> None:
        if self.capacity_listener is not None:
            self.capacity_listener()


def can_decode(view: EndpointView) -> bool:
    """Whether an endpoint can serve as the decode (primary) target."""
    return view.endpoint.role in (None, Role.DECODE, Role.BOTH, Role.PREFILL_DECODE)


def log_placement(event: str, request_id: str, result: SchedulingResult) -> None:
    """Where a request goes and why (debug), as the gateway and the gRPC faces log it."""
    prefill = result.prefill_targets
    logger.debug(
        event,
        request_id=request_id,
        decode=result.decode.best.name,
        prefill=prefill[0].name if prefill else "-",
        decision=result.decision.value,
        reason=result.reason,
    )
