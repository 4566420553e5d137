"""Endpoint state: who is in the pools, what their last scrape said, what is in flight.

Discovery (a static list here; Kubernetes later, behind `EndpointSource`) decides which
endpoints exist; the scraper records their metrics and health; the gateway counts the
requests it has in flight to each and feeds each endpoint's circuit breaker with their
outcomes. `views()` turns all of that into the immutable snapshot a scheduling cycle reads.
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tandem.discovery.endpoints import Endpoint
from tandem.orchestrator.circuit_breaker import BreakerState, CircuitBreaker, CircuitBreakerConfig
from tandem.orchestrator.scheduling.types import EndpointView, EngineMetrics


@dataclass(slots=True)
class EndpointState:
    endpoint: Endpoint
    metrics: EngineMetrics | None = None
    healthy: bool = False
    """Schedulable only once a scrape has succeeded, and until scrapes keep failing."""
    consecutive_failures: int = 0
    last_error: str | None = None
    in_flight: int = 0
    in_flight_tokens: int = 0
    itl_s: float | None = None
    """Recent mean inter-token gap, seconds (`EndpointStore.record_scrape`)."""
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(CircuitBreakerConfig()))

    def schedulable(self, now: float) -> bool:
        return self.healthy and self.breaker.admits(now)

    @property
    def warming_up(self) -> bool:
        """Discovered, but not scraped yet: neither healthy nor judged unhealthy."""
        return self.metrics is None and self.consecutive_failures == 0


@dataclass(slots=True)
class EndpointStore:
    """The orchestrator's view of every endpoint, updated by discovery, scraper and gateway."""

    staleness_s: float
    failures_before_unhealthy: int = 2
    breaker_config: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    _states: dict[str, EndpointState] = field(default_factory=dict)

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> tuple[list[str], list[str]]:
        """Replace the endpoint set; returns (added, removed) names. Known state is kept."""
        wanted = {e.name: e for e in endpoints}
        removed = [name for name in self._states if name not in wanted]
        added = [name for name in wanted if name not in self._states]
        for name in removed:
            del self._states[name]
        for name, endpoint in wanted.items():
            state = self._states.get(name)
            if state is None:
                self._states[name] = EndpointState(
                    endpoint, breaker=CircuitBreaker(self.breaker_config)
                )
            else:
                state.endpoint = endpoint
        return added, removed

    def endpoints(self) -> list[Endpoint]:
        return [state.endpoint for state in self._states.values()]

    def states(self) -> list[EndpointState]:
        return list(self._states.values())

    def state(self, name: str) -> EndpointState | None:
        return self._states.get(name)

    def record_scrape(self, name: str, metrics: EngineMetrics) -> None:
        state = self._states.get(name)
        if state is None:
            return
        state.itl_s = _learned_itl(state.itl_s, state.metrics, metrics)
        state.metrics = metrics
        state.healthy = True
        state.consecutive_failures = 0
        state.last_error = None

    def record_scrape_failure(self, name: str, error: str, *, definitive: bool = False) -> bool:
        """Count a failed scrape; returns True when this made the endpoint unhealthy.

        A `definitive` failure (the pod refused the connection, or answered that its engine
        is down) excludes it at once; others (a timeout) only after
        `failures_before_unhealthy` in a row."""
        state = self._states.get(name)
        if state is None:
            return False
        state.consecutive_failures += 1
        state.last_error = error
        was_healthy = state.healthy
        if definitive or state.consecutive_failures >= self.failures_before_unhealthy:
            state.healthy = False
        return was_healthy and not state.healthy

    def record_outcome(self, name: str, served: bool, now: float) -> BreakerState | None:
        """A request's outcome on an endpoint; returns the breaker's new state when this
        opened or closed it."""
        state = self._states.get(name)
        if state is None:
            return None
        if served:
            return BreakerState.CLOSED if state.breaker.on_success() else None
        return BreakerState.OPEN if state.breaker.on_failure(now) else None

    def acquire(self, name: str, tokens: int = 0, now: float | None = None) -> bool:
        """Count a request sent there; returns True when it is the breaker's half-open probe
        (`now` given)."""
        state = self._states.get(name)
        if state is None:
            return False
        state.in_flight += 1
        state.in_flight_tokens += tokens
        return now is not None and state.breaker.on_dispatch(now)

    def abandon_probe(self, name: str) -> None:
        """A probe request ended without an outcome."""
        state = self._states.get(name)
        if state is not None:
            state.breaker.on_abandoned()

    def release_tokens(self, name: str, tokens: int) -> None:
        """The prefill is over (first byte seen): its tokens no longer load the endpoint."""
        state = self._states.get(name)
        if state is not None:
            state.in_flight_tokens = max(0, state.in_flight_tokens - tokens)

    def release(self, name: str) -> None:
        state = self._states.get(name)
        if state is not None:
            state.in_flight = max(0, state.in_flight - 1)

    def views(self, now: float) -> list[EndpointView]:
        """A snapshot of the schedulable endpoints (healthy, breaker not open) for one
        scheduling cycle."""
        return [
            EndpointView(
                endpoint=state.endpoint,
                metrics=state.metrics,
                metrics_fresh=state.metrics is not None
                and now - state.metrics.scraped_at <= self.staleness_s,
                in_flight=state.in_flight,
                in_flight_tokens=state.in_flight_tokens,
                itl_s=state.itl_s,
            )
            for state in self._states.values()
            if state.schedulable(now)
        ]

    def warming_up(self) -> list[Endpoint]:
        """Endpoints discovered but not scraped yet."""
        return [state.endpoint for state in self._states.values() if state.warming_up]

    def counts(self, now: float) -> tuple[int, int]:
        """(known, schedulable) endpoint counts."""
        schedulable = sum(1 for state in self._states.values() if state.schedulable(now))
        return len(self._states), schedulable


ITL_SMOOTHING = 0.3
"""Weight of the newest interval in the learned inter-token gap (an exponential average):
an interval between two scrapes may hold only a few of a simulated pod's slowed-down steps."""


def _learned_itl(
    learned: float | None, before: EngineMetrics | None, after: EngineMetrics
) -> float | None:
    """The mean gap of the tokens generated between two scrapes, averaged into what was
    learned; unchanged when no token was generated (or the pod restarted: counters fell).
    In the pod's own seconds: a simulated pod reports its model time, as its clients see it."""
    if before is None or before.itl_count is None or before.itl_sum_s is None:
        return learned
    if after.itl_count is None or after.itl_sum_s is None:
        return learned
    tokens = after.itl_count - before.itl_count
    if tokens <= 0:
        return learned
    gap = (after.itl_sum_s - before.itl_sum_s) / tokens
    return gap if learned is None else learned + ITL_SMOOTHING * (gap - learned)
