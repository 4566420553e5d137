"""Scaling signals: what a pod sustains within the SLO (the step-time model), and each pool's
desired replicas from the load the orchestrator sees."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from tandem.costmodel.capacity import (
    decode_pods_for_itl,
    prefill_tokens_per_s,
    prompt_seconds,
    scaled,
)
from tandem.costmodel.profiles import get_profile
from tandem.costmodel.step import decode_step_seconds
from tandem.errors import OrchestratorConfigError
from tandem.orchestrator.config import ScalingConfig, parse_orchestrator_config
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.scaling import ScalingSignal
from tandem.orchestrator.scheduling.types import EngineMetrics
from tests.support.endpoints import pool
from tests.support.routers import router as make_router
from tests.unit.scheduling.support import make_request

PROFILE = "llama-3.1-8b-h100-tp1"
STEP = get_profile(PROFILE).step


# -- what one pod sustains --------------------------------------------------------------------


def test_short_prompts_share_a_step_and_long_ones_are_chunked() -> None:
    # 100-token prompts: 81 share an 8,192-token step, which streams the weights once.
    packed = prompt_seconds(STEP, 100)
    alone = prompt_seconds(STEP, 100, max_num_batched_tokens=100)
    assert packed < alone / 2
    # A prompt four budgets long costs four steps, later chunks reading more context.
    long = prompt_seconds(STEP, 4 * 8192)
    assert long > 4 * prompt_seconds(STEP, 8192)
    assert prefill_tokens_per_s(STEP, 100) == pytest.approx(100 / packed)


def test_a_slower_clock_divides_what_a_pod_sustains() -> None:
    assert prefill_tokens_per_s(scaled(STEP, 5.0), 2000) == pytest.approx(
        prefill_tokens_per_s(STEP, 2000) / 5.0
    )


@pytest.mark.parametrize(("running", "context"), [(1, 2_000), (64, 200_000), (400, 3_000_000)])
def test_decode_pods_for_itl_is_the_fewest_that_step_within_the_target(
    running: int, context: int
) -> None:
    itl = 0.03
    pods = decode_pods_for_itl(STEP, running, context, itl)
    enough = math.ceil(pods)
    assert decode_step_seconds(STEP, max(1, running // enough), context // enough) <= itl + 1e-9
    if enough > 1:  # one pod fewer steps too slowly
        fewer = enough - 1
        assert decode_step_seconds(STEP, math.ceil(running / fewer), context // fewer) > itl


def test_an_itl_target_below_a_steps_fixed_cost_cannot_be_met() -> None:
    assert decode_pods_for_itl(STEP, 8, 10_000, STEP.t_ovh + STEP.t_w) == math.inf
    assert decode_pods_for_itl(STEP, 0, 0, 0.001) == 0.0


# -- each pool's desired replicas ---------------------------------------------------------------


def _signal(**overrides: object) -> tuple[ScalingSignal, EndpointStore]:
    config = ScalingConfig.model_validate({"profile": PROFILE, "window_s": 10.0, **overrides})
    store = EndpointStore(2.0)
    store.set_endpoints(pool("prefill", 2, 1) + pool("decode", 2, 2))
    for endpoint in store.endpoints():
        store.record_scrape(endpoint.name, EngineMetrics(0, 0, 0.0, 0.0))
    return ScalingSignal(config), store


def test_an_idle_cluster_wants_the_minimum() -> None:
    signal, store = _signal()
    needs = signal.needs(store.states(), 1.0)
    assert {pool: n.desired for pool, n in needs.items()} == {"prefill": 1, "decode": 1}
    assert {pool: n.replicas for pool, n in needs.items()} == {"prefill": 2, "decode": 2}
    assert signal.needs(store.states(), 1.0)["prefill"].needs["prefill_rate"] == 0.0


def test_the_prefill_rate_against_one_pods_rate_sets_the_prefill_pool() -> None:
    signal, store = _signal(prefill_utilization=0.5)
    pod_rate = prefill_tokens_per_s(STEP, 2000)
    for tick in range(100):  # 20,000 prompt tokens per second over the 10 s window
        signal.record_prefill("prefill", 2000, tick * 0.1)
    needs = signal.needs(store.states(), 10.0)["prefill"]
    assert needs.prefill_tokens_per_s == pytest.approx(20_000)
    assert needs.pod_prefill_tokens_per_s == pytest.approx(pod_rate)
    assert needs.needs["prefill_rate"] == pytest.approx(20_000 / (pod_rate * 0.5))
    assert needs.desired == math.ceil(20_000 / (pod_rate * 0.5))
    assert signal.needs(store.states(), 10.0)["decode"].desired == 1
    # Once the window has passed with nothing routed, the need is gone.
    assert signal.needs(store.states(), 30.0)["prefill"].desired == 1


def test_a_growing_prefill_queue_raises_the_prefill_pool_at_once() -> None:
    signal, store = _signal(ttft_s=0.5)
    pod_rate = prefill_tokens_per_s(STEP, 1)  # no request seen yet: the shortest prompts
    names = [e.name for e in store.endpoints() if e.role == "prefill"]
    before = signal.needs(store.states(), 1.0)["prefill"].desired
    for name in names:
        store.acquire(name, tokens=round(3 * pod_rate * 0.5))
    grown = signal.needs(store.states(), 1.0)["prefill"]
    assert before == 1
    assert grown.needs["prefill_backlog"] == pytest.approx(6.0, rel=1e-3)
    assert grown.desired == 6
    for name in names:
        store.release_tokens(name, round(3 * pod_rate * 0.5))
    assert signal.needs(store.states(), 1.0)["prefill"].desired == 1


def test_kv_usage_and_the_itl_target_set_the_decode_pool() -> None:
    signal, store = _signal(kv_utilization=0.8, itl_s=0.02)
    decoders = [e.name for e in store.endpoints() if e.role == "decode"]
    for name in decoders:
        store.record_scrape(
            name, EngineMetrics(0, 100, 0.9, 1.0, block_size=16, num_gpu_blocks=28_125)
        )
    needs = signal.needs(store.states(), 1.0)["decode"]
    assert needs.needs["kv"] == pytest.approx(1.8 / 0.8)
    context = round(2 * 0.9 * 28_125 * 16)
    assert needs.needs["itl"] == pytest.approx(decode_pods_for_itl(STEP, 200, context, 0.02))
    assert needs.desired == math.ceil(max(needs.needs["kv"], needs.needs["itl"]))
    assert needs.desired > 2


def test_desired_replicas_stay_within_the_bounds() -> None:
    signal, store = _signal(min_replicas=2, max_replicas=3, itl_s=STEP.t_ovh + STEP.t_w)
    for name in [e.name for e in store.endpoints() if e.role == "decode"]:
        store.record_scrape(name, EngineMetrics(0, 4, 0.1, 1.0))
    needs = signal.needs(store.states(), 1.0)
    assert needs["prefill"].desired == 2  # idle, held at the minimum
    assert needs["decode"].needs["itl"] == math.inf
    assert needs["decode"].desired == 3  # the target cannot be met: as many as allowed


def test_aggregated_pods_add_their_prefill_and_decode_needs() -> None:
    config = ScalingConfig.model_validate({"profile": PROFILE, "window_s": 10.0})
    signal = ScalingSignal(config)
    store = EndpointStore(2.0)
    store.set_endpoints(pool("both", 3, 1))
    for endpoint in store.endpoints():
        store.record_scrape(endpoint.name, EngineMetrics(0, 10, 0.6, 1.0))
    pod_rate = prefill_tokens_per_s(STEP, 4000)
    for tick in range(10):
        signal.record_prefill("both", 4000, float(tick))
    needs = signal.needs(store.states(), 10.0)["both"]
    prefill = 40_000 / 10.0 / (pod_rate * 0.8)
    assert needs.needs["prefill_rate"] == pytest.approx(prefill)
    assert needs.needs["kv"] == pytest.approx(3 * 0.6 / 0.8)
    assert needs.desired == math.ceil(prefill + max(needs.needs["kv"], needs.needs["itl"]))


def test_the_scaling_section_names_a_known_profile() -> None:
    with pytest.raises(OrchestratorConfigError, match="unknown engine profile 'h100'"):
        parse_orchestrator_config({"scaling": {"profile": "h100"}})
    with pytest.raises(OrchestratorConfigError, match="min_replicas is above max_replicas"):
        parse_orchestrator_config({"scaling": {"profile": PROFILE, "min_replicas": 5,
                                               "max_replicas": 2}})  # fmt: skip


# -- the router feeds it and exports it --------------------------------------------------------


def test_the_router_counts_each_prefill_where_it_runs_and_exports_the_gauges() -> None:
    now = 10.0
    router = make_router(  # token-load always disaggregates
        {"scheduler": "token-load", "scaling": {"profile": PROFILE, "window_s": 10.0}},
        clock=lambda: now,
    )
    endpoints = pool("prefill", 1, 1) + pool("decode", 2, 2)
    router.on_endpoints(endpoints)
    for endpoint in endpoints:
        router.store.record_scrape(endpoint.name, EngineMetrics(0, 1, 0.1, now))
    request = make_request("word " * 3000)
    router.acquire(request, router.schedule(request))

    needs = router.pool_needs()
    assert needs["prefill"].prefill_tokens_per_s == pytest.approx(request.num_prompt_tokens)
    assert needs["prefill"].needs["prefill_backlog"] > 0
    assert needs["decode"].prefill_tokens_per_s == 0.0
    router.refresh_gauges()
    text = generate_latest(router.metrics.registry).decode()
    assert 'tandem_pool_desired_replicas{pool="prefill"} 1.0' in text
    assert 'tandem_pool_replicas{pool="decode"} 2.0' in text
    assert 'tandem_pool_replicas_needed{pool="prefill",signal="prefill_backlog"}' in text


def test_without_a_scaling_section_no_pool_is_sized() -> None:
    router = make_router({})
    router.on_endpoints(pool("decode", 1, 1))
    assert router.pool_needs() == {}
    router.refresh_gauges()
    assert "tandem_pool_desired_replicas{" not in generate_latest(router.metrics.registry).decode()


def test_the_pools_own_token_counts_calibrate_the_orchestrators_estimate() -> None:
    signal, store = _signal()
    [prefill, _] = [e for e in store.endpoints() if e.role == "prefill"]
    signal.observe_scrape(prefill, EngineMetrics(0, 0, 0.0, 0.0, computed_prompt_tokens=1000))
    for tick in range(10):  # predicted at 8,000 tokens each, the pod computed 5,000
        signal.record_prefill("prefill", 8000, float(tick))
        signal.record_prefilled("prefill", 8000)
    assert signal.token_ratio("prefill") == 1.0  # nothing counted by the pod yet
    signal.observe_scrape(
        prefill, EngineMetrics(0, 0, 0.0, 9.0, computed_prompt_tokens=1000 + 50_000)
    )
    assert signal.token_ratio("prefill") == pytest.approx(5 / 8)
    needs = signal.needs(store.states(), 10.0)["prefill"]
    assert needs.prefill_tokens_per_s == pytest.approx(5000)
    assert needs.token_ratio == pytest.approx(5 / 8)
    # A restarted pod's counter starts again: what it counted before is kept.
    signal.observe_scrape(prefill, EngineMetrics(0, 0, 0.0, 11.0, computed_prompt_tokens=200))
    signal.observe_scrape(prefill, EngineMetrics(0, 0, 0.0, 12.0, computed_prompt_tokens=400))
    assert signal.token_ratio("prefill") == pytest.approx(50_200 / 80_000)
    # Other pools keep their own ratio; a wild one is held within bounds.
    signal.record_prefilled("decode", 60_000)
    [decode, _] = [e for e in store.endpoints() if e.role == "decode"]
    signal.observe_scrape(decode, EngineMetrics(0, 0, 0.0, 0.0, computed_prompt_tokens=0))
    signal.observe_scrape(decode, EngineMetrics(0, 0, 0.0, 1.0, computed_prompt_tokens=10**7))
    assert signal.token_ratio("decode") == 4.0


def test_a_pool_profile_names_a_pool() -> None:
    with pytest.raises(OrchestratorConfigError, match="pool_profiles: no pool aggregated"):
        parse_orchestrator_config(
            {"scaling": {"profile": PROFILE, "pool_profiles": {"aggregated": PROFILE}}}
        )


def test_a_pool_of_other_pods_is_sized_by_its_own_profile() -> None:
    signal, store = _signal(pool_profiles={"decode": "llama-3.1-70b-h100-tp4"})
    needs = signal.needs(store.states(), 1.0)
    big = get_profile("llama-3.1-70b-h100-tp4").step
    assert needs["prefill"].pod_prefill_tokens_per_s == pytest.approx(prefill_tokens_per_s(STEP, 1))
    assert needs["decode"].pod_prefill_tokens_per_s == pytest.approx(prefill_tokens_per_s(big, 1))


def test_a_request_that_ended_before_its_first_byte_does_not_calibrate() -> None:
    router = make_router(
        {"scheduler": "token-load", "scaling": {"profile": PROFILE}}, clock=lambda: 1.0
    )
    endpoints = pool("prefill", 1, 1) + pool("decode", 1, 2)
    router.on_endpoints(endpoints)
    for endpoint in endpoints:
        router.store.record_scrape(endpoint.name, EngineMetrics(0, 0, 0.0, 1.0))
    [prefill] = [e for e in endpoints if e.role == "prefill"]
    predicted = 0

    def route(first_byte: bool) -> None:
        nonlocal predicted
        request = make_request(f"prompt {predicted} {first_byte} " + "word " * 3000)
        loads = router.acquire(request, router.schedule(request))
        if first_byte:
            router.prefill_done(loads)
            predicted += loads.tokens
        router.release(loads)  # after a failure (refused, timed out): nothing computed

    router.on_scrape(prefill, EngineMetrics(0, 0, 0.0, 1.0, computed_prompt_tokens=0), None)
    for _ in range(20):
        route(first_byte=False)
    for _ in range(20):
        route(first_byte=True)
    router.on_scrape(prefill, EngineMetrics(0, 0, 0.0, 2.0, computed_prompt_tokens=60_000), None)
    assert router.scaling is not None
    assert router.scaling.token_ratio("prefill") == pytest.approx(60_000 / predicted)


def test_a_pod_that_stopped_answering_scrapes_adds_no_decode_need() -> None:
    signal, store = _signal()
    decoders = [e.name for e in store.endpoints() if e.role == "decode"]
    for name in decoders:
        store.record_scrape(name, EngineMetrics(0, 50, 0.9, 1.0))
    store.record_scrape_failure(decoders[0], "ConnectError", definitive=True)
    assert signal.needs(store.states(), 1.0)["decode"].needs["kv"] == pytest.approx(0.9 / 0.8)
