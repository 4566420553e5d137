"""The router's load accounting: a request loads the pod that prefills it by the prompt
tokens that pod is predicted not to hold, until its first byte."""

from __future__ import annotations

from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.types import EngineMetrics
from tests.support.endpoints import pool
from tests.support.routers import router as make_router
from tests.unit.scheduling.support import group_prompt, make_request

NOW = 10.0


def _router() -> Router:
    router = make_router({"scheduler": "token-load"}, clock=lambda: NOW)  # always disaggregates
    endpoints = pool("prefill", 1, 1) + pool("decode", 1, 2)
    router.on_endpoints(endpoints)
    for endpoint in endpoints:
        router.store.record_scrape(endpoint.name, EngineMetrics(0, 1, 0.1, NOW))
    return router


def _prefill_tokens(router: Router) -> int:
    [prefill] = [e.name for e in router.store.endpoints() if e.role == "prefill"]
    state = router.store.state(prefill)
    assert state is not None
    return state.in_flight_tokens


def test_a_cached_prefix_loads_its_prefill_pod_only_by_the_rest() -> None:
    router = _router()
    first = make_request(group_prompt("What was the revenue in the third quarter?"))
    second = make_request(group_prompt("Who signed the report?"))

    result = router.schedule(first)
    loads = router.acquire(first, result)
    assert result.uncached_tokens == first.num_prompt_tokens
    assert _prefill_tokens(router) == first.num_prompt_tokens
    router.prefill_done(loads)
    assert _prefill_tokens(router) == 0

    result = router.schedule(second)
    router.acquire(second, result)
    assert result.uncached_tokens is not None
    assert 0 < result.uncached_tokens < second.num_prompt_tokens - 600  # the shared rules
    assert _prefill_tokens(router) == result.uncached_tokens
