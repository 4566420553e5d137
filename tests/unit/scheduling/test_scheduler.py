"""Scheduler.schedule end to end on built configurations: affinity, load, index upkeep."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import tandem.orchestrator as orchestrator
from tandem.orchestrator.scheduling.config import build_scheduler, load_config_file
from tandem.orchestrator.scheduling.scheduler import Scheduler
from tandem.orchestrator.scheduling.types import EndpointView, PDDecision
from tests.unit.scheduling.support import (
    group_prompt,
    make_request,
    make_view,
    pd_config,
    scheduler_from,
)

TANDEM_YAML = Path(orchestrator.__file__).parent / "configs" / "tandem.yaml"
DECODERS = ("d0", "d1", "d2")


def pool(in_flight: dict[str, int] | None = None) -> list[EndpointView]:
    """Two prefill and three decode pods with equal metrics, each decode pod decoding one
    request (an idle one would prefill in place); optional in-flight counts."""
    busy = {name: 1 for name in DECODERS} | (in_flight or {})
    return [
        make_view("p0", "prefill", waiting=1, kv_usage=0.2),
        make_view("p1", "prefill", waiting=1, kv_usage=0.2),
        *(
            make_view(name, "decode", waiting=1, kv_usage=0.3, in_flight=busy[name])
            for name in DECODERS
        ),
    ]


def tandem(seed: int) -> Scheduler:
    return build_scheduler(load_config_file(TANDEM_YAML), rng=random.Random(seed))


LOAD_HEAVY = pd_config(
    plugins=[
        {"type": "approx-prefix-cache-producer"},
        {"type": "prefill-filter"},
        {"type": "decode-filter"},
        {"type": "prefix-cache-scorer"},
        {"type": "active-request-scorer"},
        {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 256}},
    ],
    prefill=[{"pluginRef": "prefill-filter"}, {"pluginRef": "prefix-cache-scorer"}],
    decode=[
        {"pluginRef": "decode-filter"},
        {"pluginRef": "prefix-cache-scorer", "weight": 1},
        {"pluginRef": "active-request-scorer", "weight": 3},
    ],
)


@pytest.mark.parametrize("seed", range(6))
def test_group_follows_its_prefix_when_loads_are_equal(seed: int) -> None:
    scheduler = tandem(seed)

    first = scheduler.schedule(make_request(group_prompt("Revenue in Q3?")), pool(), now=0.0)
    second = scheduler.schedule(make_request(group_prompt("Who signed it?")), pool(), now=1.0)

    assert first.decode.best.name in DECODERS
    assert second.decode.best.name == first.decode.best.name
    assert second.decode.scores["prefix-cache-scorer"][first.decode.best.name] > 0.9
    # The prompt is now cached where it will be decoded, so it is prefilled in place.
    assert (first.decision, second.decision) == (PDDecision.DISAGGREGATE, PDDecision.LOCAL)


@pytest.mark.parametrize("seed", range(6))
def test_unrelated_prompt_gets_no_prefix_credit(seed: int) -> None:
    scheduler = tandem(seed)
    first = scheduler.schedule(make_request(group_prompt("Revenue in Q3?")), pool(), now=0.0)

    other = scheduler.schedule(make_request("unrelated " * 400), pool(), now=1.0)

    assert set(other.decode.scores["prefix-cache-scorer"].values()) == {0.0}
    assert other.decision is PDDecision.DISAGGREGATE
    assert first.decode.best.name in DECODERS


@pytest.mark.parametrize("seed", range(6))
def test_busy_prefix_holder_loses_to_a_heavier_load_scorer(seed: int) -> None:
    scheduler = scheduler_from(LOAD_HEAVY, seed=seed)
    first = scheduler.schedule(make_request(group_prompt("Revenue in Q3?")), pool(), now=0.0)
    holder = first.decode.best.name

    equal = scheduler.schedule(make_request(group_prompt("Who signed it?")), pool(), now=1.0)
    busy = scheduler.schedule(make_request(group_prompt("Any risks?")), pool({holder: 20}), now=2.0)

    assert equal.decode.best.name == holder
    assert busy.decode.best.name != holder
    assert busy.decode.best.name in DECODERS


def test_disaggregated_request_is_recorded_on_decode_and_prefill_picks() -> None:
    scheduler = tandem(0)
    request = make_request(group_prompt("Revenue in Q3?"))

    result = scheduler.schedule(request, pool(), now=0.0)

    hashes = scheduler.prefix_index.hashes(request.prompt)
    held = {name: scheduler.prefix_index.match(hashes, name) for name in ("p0", "p1", *DECODERS)}
    assert result.decision is PDDecision.DISAGGREGATE
    assert [t.name for t in result.prefill_targets] in (["p0", "p1"], ["p1", "p0"])
    expected = {result.decode.best.name, result.prefill_targets[0].name}
    assert {name for name, blocks in held.items() if blocks == len(hashes)} == expected
    assert {name for name, blocks in held.items() if blocks == 0} == held.keys() - expected


def test_local_prefill_is_recorded_on_the_decode_pick_only() -> None:
    scheduler = tandem(0)
    request = make_request("short prompt " * 40)  # 520 characters: 2 blocks, 130 tokens

    result = scheduler.schedule(request, pool(), now=0.0)

    hashes = scheduler.prefix_index.hashes(request.prompt)
    assert (result.decision, result.reason) == (PDDecision.LOCAL, "uncached_below_threshold")
    assert len(hashes) == 2
    assert [n for n in ("p0", "p1", *DECODERS) if scheduler.prefix_index.match(hashes, n)] == [
        result.decode.best.name
    ]


@pytest.mark.parametrize(
    ("auto_tune", "kv_tokens", "expected_size"),
    [(True, 64 * 3, 3), (True, 0, 5), (False, 64 * 3, 5)],
)
def test_endpoint_capacity_bounds_the_index_when_auto_tuned(
    auto_tune: bool, kv_tokens: int, expected_size: int
) -> None:
    config = pd_config(
        plugins=[
            {"type": "approx-prefix-cache-producer", "parameters": {"autoTune": auto_tune}},
            {"type": "prefill-filter"},
            {"type": "decode-filter"},
        ],
        prefill=[{"pluginRef": "prefill-filter"}],
        decode=[{"pluginRef": "decode-filter"}],
    )
    scheduler = scheduler_from(config)
    index = scheduler.prefix_index
    index.record("d0", index.hashes("x" * 256 * 5))

    scheduler.endpoint_capacity("d0", kv_tokens)

    assert index.size("d0") == expected_size


def test_forget_endpoint_drops_its_prefixes() -> None:
    scheduler = tandem(0)
    request = make_request(group_prompt("Revenue in Q3?"))
    first = scheduler.schedule(request, pool(), now=0.0)
    hashes = scheduler.prefix_index.hashes(request.prompt)

    scheduler.forget_endpoint(first.decode.best.name)

    assert scheduler.prefix_index.match(hashes, first.decode.best.name) == 0
