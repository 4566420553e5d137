"""Which way the P:D split moves: the rebalancer's decisions, table-driven, and its config."""

from __future__ import annotations

import re

import pytest
from prometheus_client import generate_latest

from tandem.bench.workload import ClusterShape
from tandem.errors import OrchestratorConfigError
from tandem.orchestrator.config import RebalanceConfig, RoleBounds, parse_orchestrator_config
from tandem.orchestrator.rebalance import Rebalancer
from tandem.orchestrator.scaling import PoolNeeds
from tandem.orchestrator.scheduling.types import EngineMetrics
from tests.support.endpoints import pool
from tests.support.routers import router as make_router

CONFIG = RebalanceConfig(
    prefill=RoleBounds(min=1, max=6),
    decode=RoleBounds(min=2, max=7),
    interval_s=30,
    margin=0.1,
    min_load=0.5,
    sustain_s=0,
)


def needs(pool: str, pods: int, prefill: float = 0.0, decode: float = 0.0) -> PoolNeeds:
    """A pool of `pods` whose prefill and decode needs are the given pods' worth."""
    return PoolNeeds(
        pool=pool,
        replicas=pods,
        desired=0,
        needs={"prefill_rate": prefill, "prefill_backlog": 0.0, "kv": decode, "itl": 0.0},
        prefill_tokens_per_s=0.0,
        pod_prefill_tokens_per_s=1.0,
    )


@pytest.mark.parametrize(
    ("prefill_pods", "prefill_load", "decode_pods", "decode_load", "expected"),
    [
        # RAG-like: the prefill pool carries three times its pods, decode is nearly idle.
        (3, 4.5, 5, 1.0, ("decode", "prefill", "prefill_pool_busier")),
        # Chat-like: decode pods are the bottleneck, prefill pods can spare one.
        (3, 0.9, 5, 6.0, ("prefill", "decode", "decode_pool_busier")),
        # Balanced: a move would make the other pool the bottleneck.
        (3, 2.4, 5, 4.0, None),
        # Light load: any split serves.
        (3, 1.2, 5, 0.5, None),
        # The bottleneck pool is at its maximum (prefill: 6).
        (6, 9.0, 2, 0.2, None),
        # The donor is at its minimum (decode: 2).
        (4, 8.0, 2, 0.2, None),
        # A move that helps by less than the margin (1.05 → 0.97 per pod, -8 %) waits.
        (4, 2.9, 4, 4.2, None),
        # One that makes the other pool the bottleneck, worse than today, is not made.
        (4, 6.0, 4, 5.0, None),
    ],
)
def test_the_move_relieves_the_bottleneck_within_bounds(
    prefill_pods: int,
    prefill_load: float,
    decode_pods: int,
    decode_load: float,
    expected: tuple[str, str, str] | None,
) -> None:
    rebalancer = Rebalancer(CONFIG)
    pools = {
        "prefill": needs("prefill", prefill_pods, prefill=prefill_load),
        "decode": needs("decode", decode_pods, decode=decode_load),
    }

    move = rebalancer.propose(pools, now=100.0)

    if expected is None:
        assert move is None
        return
    assert move is not None
    assert (move.source, move.target, move.reason) == expected
    assert move.load_per_pod_after <= move.load_per_pod * (1 - CONFIG.margin)


def test_a_pool_s_load_is_its_prefill_need_plus_its_decode_need() -> None:
    pool = needs("decode", 4, prefill=1.5, decode=2.0)
    assert pool.load == pytest.approx(3.5)


def test_no_move_starts_within_the_interval_of_the_last() -> None:
    rebalancer = Rebalancer(CONFIG)
    busy_prefill = {"prefill": needs("prefill", 3, prefill=4.5), "decode": needs("decode", 5)}

    assert rebalancer.propose(busy_prefill, now=10.0) is not None
    assert rebalancer.propose(busy_prefill, now=39.0) is None
    assert rebalancer.propose(busy_prefill, now=40.0) is not None


def test_a_move_starts_once_the_load_has_asked_for_it_for_sustain_s() -> None:
    rebalancer = Rebalancer(CONFIG.model_copy(update={"sustain_s": 60}))
    busy_prefill = {"prefill": needs("prefill", 3, prefill=4.5), "decode": needs("decode", 5)}
    busy_decode = {"prefill": needs("prefill", 3), "decode": needs("decode", 5, decode=9.0)}
    balanced = {"prefill": needs("prefill", 3, prefill=1.2), "decode": needs("decode", 5)}

    assert rebalancer.propose(busy_prefill, now=0.0) is None
    assert rebalancer.propose(busy_prefill, now=59.0) is None
    assert rebalancer.propose(balanced, now=60.0) is None  # the shift ended: start over
    assert rebalancer.propose(busy_prefill, now=70.0) is None
    assert rebalancer.propose(busy_decode, now=130.0) is None  # the other way: start over
    move = rebalancer.propose(busy_decode, now=190.0)
    assert move is not None
    assert move.target == "decode"


def test_a_pool_with_no_pods_serving_is_left_alone() -> None:
    # Its demand is not observed (e.g. its only pod is the one moving).
    rebalancer = Rebalancer(CONFIG)
    assert rebalancer.propose({"decode": needs("decode", 5, decode=9.0)}, now=0.0) is None


def test_the_router_weighs_its_pools_and_counts_each_move() -> None:
    router = make_router(
        {"scaling": {"profile": "llama-3.1-8b-h100-tp1"}, "rebalance": CONFIG.model_dump()}
    )
    router.on_endpoints(pool("prefill", 3, 1) + pool("decode", 5, 2))
    for name in [f"decode-{i}" for i in range(5)]:  # every decode pod's KV nearly full
        router.store.record_scrape(
            name, EngineMetrics(0, 100, 0.95, 0.0, block_size=16, num_gpu_blocks=28_125)
        )

    move = router.rebalance()

    assert move is not None
    assert (move.source, move.target) == ("prefill", "decode")
    exported = generate_latest(router.metrics.registry).decode()
    moved = 'tandem_pool_moves_total{reason="decode_pool_busier",source="prefill",target="decode"}'
    assert f"{moved} 1.0" in exported
    assert router.rebalance() is None  # within the interval


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"rebalance": CONFIG.model_dump()}, "rebalance needs scaling"),
        (
            {"scaling": {"profile": "llama-3.1-8b-h100-tp1"},
             "rebalance": {"prefill": {"min": 3, "max": 2}, "decode": {"max": 4}}},
            "min (3) is above max (2)",
        ),
        (
            {"scaling": {"profile": "llama-3.1-8b-h100-tp1"},
             "rebalance": {"prefill": {"min": 0, "max": 2}, "decode": {"max": 4}}},
            "rebalance.prefill.min",
        ),
    ],
)  # fmt: skip
def test_a_bad_rebalance_config_is_refused_with_what_to_fix(
    document: dict[str, object], problem: str
) -> None:
    with pytest.raises(OrchestratorConfigError, match=re.escape(problem)):
        parse_orchestrator_config(document)


def test_an_elastic_cluster_starts_within_its_bounds() -> None:
    with pytest.raises(ValueError, match=r"decode: 1 pods, outside rebalance.decode \[2, 7\]"):
        ClusterShape(prefill=6, decode=1, rebalance=CONFIG)
    with pytest.raises(ValueError, match="between prefill and decode pools"):
        ClusterShape(both=8, rebalance=CONFIG)
    assert ClusterShape(prefill=3, decode=5, rebalance=CONFIG).pods == 8


def test_a_move_is_under_way_until_it_lands_or_times_out() -> None:
    rebalancer = Rebalancer(CONFIG.model_copy(update={"move_timeout_s": 100}))
    move = rebalancer.propose(
        {"prefill": needs("prefill", 3, prefill=4.5), "decode": needs("decode", 5)}, now=0.0
    )
    assert move is not None
    target = rebalancer.start(move, {"prefill": 3, "decode": 5}, now=0.0)

    assert target == {"prefill": 4, "decode": 4}
    assert rebalancer.under_way({"prefill": 3, "decode": 5}, now=1.0)  # yet to leave
    assert rebalancer.under_way({"prefill": 3, "decode": 4}, now=5.0)  # restarting
    assert not rebalancer.under_way({"prefill": 4, "decode": 4}, now=9.0)  # landed
    assert not rebalancer.under_way({"prefill": 3, "decode": 4}, now=100.0)  # too long
    assert not rebalancer.under_way({"prefill": 3, "decode": 3}, now=9.0)  # a pod lost
