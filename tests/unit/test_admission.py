"""Admission control over a router with no pods behind it: who waits, in what order, who is
refused and why, and that waiting never leaks an endpoint's load."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tandem.errors import OpenAIError
from tandem.orchestrator.admission import Admission, Placement, Priority, priority_of
from tandem.orchestrator.config import parse_orchestrator_config
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.config import build_scheduler, load_config_file, parse_config
from tandem.orchestrator.scheduling.types import EngineMetrics, PDDecision, SchedulingRequest
from tests.support.endpoints import pool
from tests.support.schedulers import CONFIG_DIR
from tests.unit.scheduling.support import make_request

NOW = 10.0
LONG = 4_000  # prompt tokens: token-load's decider sends these to the prefill pool
SHORT = 8  # below its 16-token floor: prefilled on the decode pod


def admission(
    *,
    prefill: int = 1,
    decode: int = 1,
    saturation: dict[str, Any] | None = None,
    **settings: Any,
) -> Admission:
    """Admission over `prefill` + `decode` endpoints scheduled by token-load.yaml, each
    decode endpoint taking one request and each prefill endpoint 5,000 tokens unless said."""
    document = load_config_file(CONFIG_DIR / "token-load.yaml").model_dump()
    document["saturationDetector"] = {
        "maxRequestsPerEndpoint": 1,
        "maxPrefillTokensPerEndpoint": 5_000,
        "queueDepthThreshold": None,
        "kvCacheUtilThreshold": None,
        **(saturation or {}),
    }
    scheduler_config = parse_config(document)
    config = parse_orchestrator_config({"admission": {"max_wait_s": 5.0, **settings}})
    router = Router(
        config=config,
        scheduler=build_scheduler(scheduler_config, rng=random.Random(1)),
        store=EndpointStore(config.scrape.staleness_s),
        metrics=GatewayMetrics(),
        clock=lambda: NOW,
    )
    endpoints = pool("prefill", prefill, 1) + pool("decode", decode, 2)
    router.on_endpoints(endpoints)
    for endpoint in endpoints:
        router.store.record_scrape(endpoint.name, EngineMetrics(0, 0, 0.0, NOW))
    return Admission(router, config.admission, router.metrics, clock=lambda: NOW)


def request(tokens: int, name: str) -> SchedulingRequest:
    return make_request(f"{name} " * 10, num_prompt_tokens=tokens, request_id=name)


def refusal(exc: BaseException) -> tuple[int, str | None]:
    assert isinstance(exc, OpenAIError)
    return exc.status, exc.reject_reason


def queue_length(gate: Admission, pool_name: str) -> float:
    value = gate.metrics.admission_queue.labels(pool_name)._value.get()
    assert isinstance(value, float)
    return value


async def test_with_room_a_request_is_placed_at_once() -> None:
    gate = admission()
    placed = await gate.admit(request(LONG, "a"))
    assert placed.result.decision is PDDecision.DISAGGREGATE
    assert placed.waited_s == 0.0
    decode = gate.router.store.state("decode-0")
    assert decode is not None
    assert decode.in_flight == 1


async def test_a_request_waits_for_the_decode_pool_and_is_placed_when_room_opens() -> None:
    gate = admission()
    first = await gate.admit(request(SHORT, "first"))
    waiting = asyncio.create_task(gate.admit(request(SHORT, "second")))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert queue_length(gate, "decode") == 1
    gate.router.release(first.loads)  # the pump runs here
    second = await asyncio.wait_for(waiting, 1)
    assert second.result.decode.best.name == "decode-0"
    assert queue_length(gate, "decode") == 0


async def test_critical_requests_are_placed_before_standard_ones_that_came_earlier() -> None:
    gate = admission()
    first = await gate.admit(request(SHORT, "first"))
    order: list[str] = []

    async def wait(name: str, priority: Priority) -> Placement:
        placed = await gate.admit(request(SHORT, name), priority)
        order.append(name)
        return placed

    standard = asyncio.create_task(wait("standard", Priority.STANDARD))
    await asyncio.sleep(0)
    critical = asyncio.create_task(wait("critical", Priority.CRITICAL))
    await asyncio.sleep(0)
    gate.router.release(first.loads)
    placed = await asyncio.wait_for(critical, 1)
    assert not standard.done()
    gate.router.release(placed.loads)
    await asyncio.wait_for(standard, 1)
    assert order == ["critical", "standard"]


async def test_a_sheddable_request_is_refused_while_its_pool_is_saturated() -> None:
    gate = admission()
    await gate.admit(request(SHORT, "first"))
    with pytest.raises(OpenAIError) as refused:
        await gate.admit(request(SHORT, "shed"), Priority.SHEDDABLE)
    assert refusal(refused.value) == (429, "shed")
    assert refused.value.headers["retry-after"] == "1"
    assert refused.value.headers["x-tandem-reject-reason"] == "shed"


async def test_a_full_queue_refuses_and_a_critical_request_displaces_the_newest_standard() -> None:
    gate = admission(max_queue_per_pool=2)
    await gate.admit(request(SHORT, "first"))
    queued = [asyncio.create_task(gate.admit(request(SHORT, f"q{i}"))) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as full:
        await gate.admit(request(SHORT, "third"))
    assert refusal(full.value) == (429, "queue_full")
    critical = asyncio.create_task(gate.admit(request(SHORT, "vip"), Priority.CRITICAL))
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as displaced:
        await queued[1]
    assert refusal(displaced.value) == (429, "displaced")
    assert not queued[0].done()
    assert not critical.done()
    for task in (queued[0], critical):
        task.cancel()


async def test_a_request_that_waits_too_long_is_refused() -> None:
    gate = admission(max_wait_s=0.05)
    await gate.admit(request(SHORT, "first"))
    with pytest.raises(OpenAIError) as timed_out:
        await gate.admit(request(SHORT, "late"))
    assert refusal(timed_out.value) == (429, "queue_timeout")
    assert queue_length(gate, "decode") == 0


async def test_no_decode_endpoint_is_a_503_at_once_not_a_wait() -> None:
    gate = admission(decode=0)
    with pytest.raises(OpenAIError) as none:
        await gate.admit(request(SHORT, "a"))
    assert refusal(none.value) == (503, "no_endpoints")


async def test_a_saturated_prefill_pool_holds_only_requests_that_would_disaggregate() -> None:
    gate = admission(decode=3)
    await gate.admit(request(LONG, "fills-prefill"))
    await gate.admit(request(LONG + 1_500, "saturates-prefill"))  # 9,500 tokens > 5,000
    long = asyncio.create_task(gate.admit(request(LONG, "long")))
    await asyncio.sleep(0)
    assert not long.done()
    assert queue_length(gate, "prefill") == 1
    # A short prompt is prefilled on its decode pod: it does not wait behind the long one.
    short = await gate.admit(request(SHORT, "short"))
    assert short.result.decision is PDDecision.LOCAL
    # The look at where "long" would go left no trace in the prefix index.
    cycle_hashes = gate.router.scheduler.prefix_index.hashes(request(LONG, "long").prompt)
    assert all(
        gate.router.scheduler.prefix_index.match(cycle_hashes, name) == 0
        for name in ("prefill-0", "decode-0", "decode-1", "decode-2")
    )
    long.cancel()


async def test_a_client_that_leaves_while_waiting_leaves_no_load_behind() -> None:
    gate = admission()
    first = await gate.admit(request(SHORT, "first"))
    waiting = asyncio.create_task(gate.admit(request(SHORT, "gone")))
    await asyncio.sleep(0)
    waiting.cancel()
    gate.router.release(first.loads)  # the pump may place it in the same tick
    with pytest.raises(asyncio.CancelledError):
        await waiting
    decode = gate.router.store.state("decode-0")
    assert decode is not None
    assert decode.in_flight == 0
    assert queue_length(gate, "decode") == 0


async def test_fresh_engine_metrics_past_the_thresholds_saturate_stale_ones_do_not() -> None:
    gate = admission(saturation={"maxRequestsPerEndpoint": None, "queueDepthThreshold": 5})
    gate.router.store.record_scrape("decode-0", EngineMetrics(5, 10, 0.5, NOW))
    assert gate.router.pools(NOW).decode.saturated == frozenset({"decode-0"})
    # Requests waiting for their KV to arrive are not waiting for room.
    gate.router.store.record_scrape(
        "decode-0", EngineMetrics(6, 10, 0.5, NOW, waiting_for_capacity=1)
    )
    assert gate.router.pools(NOW).decode.saturated == frozenset()
    stale = NOW - 2 * gate.router.config.scrape.staleness_s
    gate.router.store.record_scrape("decode-0", EngineMetrics(5, 10, 0.5, stale))
    assert gate.router.pools(NOW).decode.saturated == frozenset()


@pytest.mark.parametrize(
    ("header", "priority"),
    [
        (None, Priority.STANDARD),
        ("critical", Priority.CRITICAL),
        (" Sheddable ", Priority.SHEDDABLE),
    ],
)
def test_priority_header(header: str | None, priority: Priority) -> None:
    headers = {} if header is None else {"x-tandem-priority": header}
    assert priority_of(headers) is priority


def test_an_unknown_priority_is_a_400_that_lists_the_choices() -> None:
    with pytest.raises(OpenAIError) as bad:
        priority_of({"x-tandem-priority": "urgent"})
    assert bad.value.status == 400
    assert "critical, standard, sheddable" in bad.value.message


async def test_a_request_waits_for_the_first_scrape_of_a_just_discovered_pool() -> None:
    gate = admission()
    for state_name in ("decode-0", "prefill-0"):
        state = gate.router.store.state(state_name)
        assert state is not None
        state.metrics, state.healthy = None, False  # discovered, never scraped
    waiting = asyncio.create_task(gate.admit(request(SHORT, "early")))
    await asyncio.sleep(0)
    assert not waiting.done()
    gate.router.store.record_scrape("decode-0", EngineMetrics(0, 0, 0.0, NOW))
    gate.router.on_scrape(gate.router.store.endpoints()[1], None, None)  # a scrape came in
    placed = await asyncio.wait_for(waiting, 1)
    assert placed.result.decode.best.name == "decode-0"


async def test_a_pool_whose_first_scrape_failed_is_a_503_not_a_wait() -> None:
    gate = admission()
    state = gate.router.store.state("decode-0")
    assert state is not None
    state.metrics, state.healthy = None, False
    gate.router.store.record_scrape_failure("decode-0", "ConnectError", definitive=True)
    with pytest.raises(OpenAIError) as none:
        await gate.admit(request(SHORT, "a"))
    assert refusal(none.value) == (503, "no_endpoints")
