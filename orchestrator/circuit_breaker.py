"""A per-endpoint circuit breaker, fed by the outcomes of the requests sent there.

Scrapes say whether a pod answers `/metrics`; only requests say whether it serves. A pod
that scrapes fine but fails what it is sent (its engine wedged, a sidecar that cannot reach
its vLLM, a prefill pod answering 5xx) is taken out of scheduling by its breaker:

- **closed**: requests flow; `consecutive_failures` failures in a row open it.
- **open**: no requests for `open_s`; each time it opens again straight from half-open
  that time doubles, up to `max_open_s`.
- **half-open**: once the open time has passed, exactly one request is let through as a
  probe. Its success closes the breaker; its failure opens it again. A probe that ends
  with no outcome (the client went away) frees the slot for another.

Defaults are Envoy's outlier detection (envoy/api/envoy/config/cluster/v3/
outlier_detection.proto: `consecutive_5xx` 5, `base_ejection_time` 30 s,
`max_ejection_time` 300 s). Pure: every method takes the time it is called at.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BreakerState(enum.IntEnum):
    """The breaker's state; the value is what `tandem_circuit_breaker_state` reports."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    consecutive_failures: int = Field(5, ge=1)
    """Failed requests in a row that open the breaker."""
    open_s: float = Field(30.0, gt=0)
    """How long an opened breaker keeps the endpoint out before a probe."""
    max_open_s: float = Field(300.0, gt=0)
    """The longest open time, however often probes fail."""

    @model_validator(mode="after")
    def _bounds(self) -> CircuitBreakerConfig:
        if self.max_open_s < self.open_s:
            raise ValueError("max_open_s must be at least open_s")
        return self


@dataclass(slots=True)
class CircuitBreaker:
    config: CircuitBreakerConfig
    consecutive_failures: int = 0
    opened_until: float | None = None
    """Set while open or half-open: when the current open time ends."""
    open_for_s: float = 0.0
    probe_in_flight: bool = False

    def state(self, now: float) -> BreakerState:
        if self.opened_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self.opened_until else BreakerState.HALF_OPEN

    def admits(self, now: float) -> bool:
        """Whether a request may be sent there now."""
        state = self.state(now)
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self.probe_in_flight
        )

    def on_dispatch(self, now: float) -> bool:
        """A request is sent there; returns True when it is the half-open probe."""
        if self.state(now) is BreakerState.HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def on_success(self) -> bool:
        """The endpoint served a request; returns True when this closed the breaker."""
        self.consecutive_failures = 0
        self.probe_in_flight = False
        if self.opened_until is None:
            return False
        self.opened_until = None
        self.open_for_s = 0.0
        return True

    def on_failure(self, now: float) -> bool:
        """The endpoint failed a request; returns True when this opened the breaker."""
        self.consecutive_failures += 1
        if not self.config.enabled:
            return False
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            self.probe_in_flight = False
            self._open(now, min(2 * self.open_for_s, self.config.max_open_s))
            return True
        if state is BreakerState.CLOSED and (
            self.consecutive_failures >= self.config.consecutive_failures
        ):
            self._open(now, self.config.open_s)
            return True
        return False

    def on_abandoned(self) -> None:
        """A probe ended without an outcome: another request may probe."""
        self.probe_in_flight = False

    def _open(self, now: float, duration_s: float) -> None:
        self.open_for_s = duration_s
        self.opened_until = now + duration_s
