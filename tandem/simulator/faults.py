"""Failure injection for the simulated pod, for reliability tests of everything in front of it.

Faults apply to the inference routes (`/v1/completions`, `/v1/chat/completions`) only, so
probes and metrics keep answering. A ready delay holds the whole start-up: the port is not
bound until it has passed, as vLLM's is not while its engine loads.

Fault injection is tandem's own: vLLM has nothing like it, and the injected errors include
statuses and types a vLLM server never answers (429 `RateLimitError`, 502, 504), standing for
what a proxy or a failing pod in front of the client would give.

One fault is switched while the pod runs, for chaos tests: SIGUSR1 stalls `/metrics` (its
answers hang until the next SIGUSR1), as a pod whose scrapes stop arriving while it serves.
"""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Status code → (OpenAI error type, message) of an injected error.
FAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequestError", "Injected fault: bad request"),
    404: ("NotFoundError", "Injected fault: not found"),
    429: ("RateLimitError", "Injected fault: too many requests"),
    500: ("InternalServerError", "Injected fault: internal server error"),
    502: ("BadGatewayError", "Injected fault: bad gateway"),
    503: ("ServiceUnavailableError", "Injected fault: service unavailable"),
    504: ("GatewayTimeoutError", "Injected fault: gateway timeout"),
}


class FaultConfig(BaseModel):
    """What to break, and how often."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of inference requests answered with an injected error."""
    error_codes: tuple[int, ...] = (503,)
    """Status codes to answer with, chosen uniformly."""
    added_latency_s: float = Field(0.0, ge=0.0)
    """Wall-clock delay added before each inference request is handled."""
    hang_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of inference requests that never get an answer."""
    crash_after: int | None = Field(None, ge=1)
    """Exit the process when this many inference requests have arrived."""
    ready_delay_s: float = Field(0.0, ge=0.0)
    """Seconds before the pod binds its port: connections are refused until then."""
    seed: int = 0

    @field_validator("error_codes")
    @classmethod
    def _known_codes(cls, codes: tuple[int, ...]) -> tuple[int, ...]:
        unknown = sorted(set(codes) - set(FAULT_ERRORS))
        if unknown or not codes:
            known = ", ".join(str(c) for c in sorted(FAULT_ERRORS))
            raise ValueError(f"error_codes must be a non-empty subset of {known}; got {unknown}")
        return codes

    @property
    def enabled(self) -> bool:
        return bool(self.error_rate or self.added_latency_s or self.hang_rate or self.crash_after)


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do with one request."""

    error_status: int | None = None
    hang: bool = False
    crash: bool = False
    delay_s: float = 0.0


METRICS_STALL_SIGNAL = signal.SIGUSR1
"""Toggles the metrics stall of a running pod."""


@dataclass(slots=True)
class FaultInjector:
    """Draws a `FaultDecision` per inference request from a seeded generator."""

    config: FaultConfig
    num_requests: int = 0
    metrics_flowing: asyncio.Event = field(default_factory=asyncio.Event)
    """Cleared while `/metrics` is stalled (toggled by METRICS_STALL_SIGNAL)."""
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        self.metrics_flowing.set()

    def decide(self) -> FaultDecision:
        self.num_requests += 1
        crash_after = self.config.crash_after
        if crash_after is not None and self.num_requests >= crash_after:
            return FaultDecision(crash=True)
        if self.config.hang_rate and self._rng.random() < self.config.hang_rate:
            return FaultDecision(hang=True, delay_s=self.config.added_latency_s)
        status = None
        if self.config.error_rate and self._rng.random() < self.config.error_rate:
            status = self._rng.choice(self.config.error_codes)
        return FaultDecision(error_status=status, delay_s=self.config.added_latency_s)

    def toggle_metrics_stall(self) -> None:
        if self.metrics_flowing.is_set():
            self.metrics_flowing.clear()
        else:
            self.metrics_flowing.set()
