"""The per-endpoint circuit breaker and how the endpoint store and router use it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tandem.discovery.endpoints import Endpoint
from tandem.orchestrator.circuit_breaker import BreakerState, CircuitBreaker, CircuitBreakerConfig
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.scheduling.types import EngineMetrics

CONFIG = CircuitBreakerConfig(consecutive_failures=3, open_s=10.0, max_open_s=25.0)


@dataclass(frozen=True, slots=True)
class Step:
    """One event at time `at`: "fail", "ok", "send" (a dispatch) or "abandon"."""

    at: float
    event: str


def run(steps: list[Step], config: CircuitBreakerConfig = CONFIG) -> CircuitBreaker:
    breaker = CircuitBreaker(config)
    for step in steps:
        if step.event == "fail":
            breaker.on_failure(step.at)
        elif step.event == "ok":
            breaker.on_success()
        elif step.event == "send":
            breaker.on_dispatch(step.at)
        else:
            breaker.on_abandoned()
    return breaker


@pytest.mark.parametrize(
    ("steps", "at", "state", "admits"),
    [
        pytest.param([], 0.0, BreakerState.CLOSED, True, id="new"),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail")], 1.0, BreakerState.CLOSED, True, id="two-failures"
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail")],
            2.0, BreakerState.OPEN, False, id="three-in-a-row-open",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(1.5, "ok"), Step(2, "fail")],
            2.0, BreakerState.CLOSED, True, id="a-success-resets-the-count",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail")],
            11.9, BreakerState.OPEN, False, id="still-open-before-open-s",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail")],
            12.0, BreakerState.HALF_OPEN, True, id="half-open-after-open-s",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail"), Step(12, "send")],
            12.5, BreakerState.HALF_OPEN, False, id="one-probe-at-a-time",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail"), Step(12, "send"),
             Step(12.5, "abandon")],
            12.5, BreakerState.HALF_OPEN, True, id="abandoned-probe-frees-the-slot",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail"), Step(12, "send"), Step(13, "ok")],
            13.0, BreakerState.CLOSED, True, id="probe-success-closes",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail"), Step(12, "send"),
             Step(13, "fail")],
            32.9, BreakerState.OPEN, False, id="probe-failure-reopens-for-twice-as-long",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail"), Step(12, "send"),
             Step(13, "fail")],
            33.0, BreakerState.HALF_OPEN, True, id="then-half-open-again",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail"), Step(12, "send"),
             Step(13, "fail"), Step(33, "send"), Step(34, "fail")],
            58.9, BreakerState.OPEN, False, id="open-time-capped-at-max-open-s",
        ),
        pytest.param(
            [Step(0, "fail"), Step(1, "fail"), Step(2, "fail"), Step(12, "send"),
             Step(13, "fail"), Step(33, "send"), Step(34, "fail")],
            59.0, BreakerState.HALF_OPEN, True, id="capped-open-time-ends",
        ),
    ],
)  # fmt: skip
def test_breaker_states(steps: list[Step], at: float, state: BreakerState, admits: bool) -> None:
    breaker = run(steps)
    assert breaker.state(at) is state
    assert breaker.admits(at) is admits


def test_a_closed_breaker_after_a_probe_starts_over_from_open_s() -> None:
    steps = [Step(t, "fail") for t in (0, 1, 2)] + [Step(12, "send"), Step(13, "fail")]
    breaker = run([*steps, Step(33, "send"), Step(34, "ok")])
    for t in (40, 41, 42):
        breaker.on_failure(t)
    assert breaker.state(51.9) is BreakerState.OPEN
    assert breaker.state(52.0) is BreakerState.HALF_OPEN


def test_a_disabled_breaker_never_opens() -> None:
    disabled = CONFIG.model_copy(update={"enabled": False})
    breaker = run([Step(t, "fail") for t in range(20)], disabled)
    assert breaker.state(20.0) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 20


def test_max_open_s_below_open_s_is_refused() -> None:
    with pytest.raises(ValueError, match="max_open_s must be at least open_s"):
        CircuitBreakerConfig(open_s=30, max_open_s=10)


def store_with(*names: str) -> EndpointStore:
    store = EndpointStore(staleness_s=2.0, failures_before_unhealthy=2, breaker_config=CONFIG)
    store.set_endpoints([Endpoint(name, "127.0.0.1", 8000 + i) for i, name in enumerate(names)])
    for name in names:
        store.record_scrape(name, EngineMetrics(waiting=0, running=0, kv_usage=0.0, scraped_at=0))
    return store


def test_an_open_breaker_takes_the_endpoint_out_of_the_views_until_its_probe() -> None:
    store = store_with("a", "b")
    changes = [store.record_outcome("a", served=False, now=t) for t in (0.0, 1.0, 2.0)]
    assert changes == [None, None, BreakerState.OPEN]
    assert [v.name for v in store.views(5.0)] == ["b"]
    assert store.counts(5.0) == (2, 1)
    assert [v.name for v in store.views(12.0)] == ["a", "b"]
    assert store.acquire("a", now=12.0) is True  # the probe
    assert [v.name for v in store.views(12.1)] == ["b"]
    assert store.record_outcome("a", served=True, now=12.2) is BreakerState.CLOSED
    assert [v.name for v in store.views(12.3)] == ["a", "b"]


def test_a_definitive_scrape_failure_excludes_at_once_a_timeout_needs_two() -> None:
    store = store_with("refused", "slow")
    assert store.record_scrape_failure("refused", "ConnectError", definitive=True) is True
    assert store.record_scrape_failure("slow", "ReadTimeout") is False
    assert [v.name for v in store.views(0.0)] == ["slow"]
    assert store.record_scrape_failure("slow", "ReadTimeout") is True
    assert store.views(0.0) == []
