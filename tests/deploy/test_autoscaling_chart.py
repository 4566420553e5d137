"""The pools' autoscalers: a KEDA ScaledObject or an HPA on the orchestrator's scaling
signals, whose query gives the pods the orchestrator itself asks for (one replica), or the
same sum over several orchestrator replicas that each see a share of the traffic."""

from __future__ import annotations

import math
from typing import Any

import helm_python
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tandem.orchestrator.config import ScalingConfig, parse_orchestrator_config
from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.types import EngineMetrics
from tests.deploy.conftest import NAMESPACE, RELEASE, REQUIRED, Rendered
from tests.support.endpoints import pool
from tests.support.promql import evaluate
from tests.support.routers import router as make_router

POOLS = {"tandem-prefill": "prefill", "tandem-decode": "decode"}


def _query(rendered: Rendered) -> str:
    trigger = rendered.one("ScaledObject")["spec"]["triggers"][0]
    query: str = trigger["metadata"]["query"]
    return query


@pytest.mark.parametrize("chart", sorted(POOLS))
def test_keda_scales_the_pools_deployment_to_the_pods_the_query_gives(
    rendered: dict[tuple[str, str], Rendered], chart: str
) -> None:
    r = rendered[chart, "autoscaling-keda"]
    scaled = r.one("ScaledObject")
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"] == {"name": r.one("Deployment")["metadata"]["name"]}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 12)
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    [trigger] = spec["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    assert trigger["metadata"]["threshold"] == "1"
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    query = _query(r)
    assert f'pool="{POOLS[chart]}"' in query
    assert f'namespace="{NAMESPACE}"' in query  # the release's own orchestrator by default
    assert "replicas" not in r.one("Deployment")["spec"]


@pytest.mark.parametrize("chart", sorted(POOLS))
def test_an_hpa_reads_the_pools_external_metric(
    rendered: dict[tuple[str, str], Rendered], chart: str
) -> None:
    r = rendered[chart, "autoscaling-hpa"]
    hpa = r.one("HorizontalPodAutoscaler")["spec"]
    deployment = r.one("Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }  # fmt: skip
    [metric] = hpa["metrics"]
    assert metric["external"]["metric"] == {
        "name": "tandem_pool_desired_replicas",
        "selector": {"matchLabels": {"pool": POOLS[chart]}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 8)
    assert r.kinds("ScaledObject") == []
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("chart", sorted(POOLS))
def test_without_autoscaling_the_chart_sets_the_replicas(
    rendered: dict[tuple[str, str], Rendered], chart: str
) -> None:
    r = rendered[chart, "defaults"]
    assert r.kinds("ScaledObject") == r.kinds("HorizontalPodAutoscaler") == []
    assert r.one("Deployment")["spec"]["replicas"] == 2


def _render(charts: dict[str, helm_python.Chart], chart: str, **autoscaling: Any) -> Rendered:
    values = {**REQUIRED[chart], "autoscaling": {"enabled": True, **autoscaling}}
    files = charts[chart].render(values, name=RELEASE, namespace=NAMESPACE)
    return Rendered(chart, "custom", values, files)


@pytest.mark.parametrize("chart", sorted(POOLS))
def test_the_schema_refuses_an_unknown_autoscaler(
    charts: dict[str, helm_python.Chart], chart: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="autoscaling"):
        _render(charts, chart, kind="vpa")


@pytest.mark.parametrize("chart", sorted(POOLS))
def test_the_query_picks_the_orchestrator_it_is_told_to(
    charts: dict[str, helm_python.Chart], chart: str
) -> None:
    query = _query(_render(charts, chart, orchestratorSelector='service="llama-8b-orchestrator"'))
    assert 'service="llama-8b-orchestrator"' in query
    assert "namespace=" not in query


# -- the query against what orchestrators export ------------------------------------------------


def _orchestrator(prefill_tokens: int, kv_usage: float) -> Router:
    """An orchestrator replica that routed one long prompt still being prefilled, over
    decode pods at `kv_usage`."""
    router = make_router(
        {"scheduler": "token-load",  # always disaggregates
         "scaling": {"profile": "llama-3.1-8b-h100-tp1", "ttft_s": 0.05, "window_s": 10.0}},
        clock=lambda: 10.0,
    )  # fmt: skip
    endpoints = pool("prefill", 2, 1) + pool("decode", 3, 2)
    router.on_endpoints(endpoints)
    for endpoint in endpoints:
        usage = kv_usage if endpoint.role == "decode" else 0.0
        router.store.record_scrape(endpoint.name, EngineMetrics(0, 8, usage, 10.0))
    [prefill] = [e.name for e in endpoints if e.role == "prefill"][:1]
    router.store.acquire(prefill, tokens=prefill_tokens)
    router.refresh_gauges()
    return router


def _scraped(routers: dict[str, Router]) -> list[tuple[dict[str, str], float]]:
    """What Prometheus holds after scraping each replica: its series, with the target's
    labels."""
    samples = []
    for instance, router in routers.items():
        text = generate_latest(router.metrics.registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = {**sample.labels, "__name__": sample.name, "instance": instance,
                          "namespace": NAMESPACE, "service": "llama-8b-orchestrator"}  # fmt: skip
                samples.append((labels, sample.value))
    return samples


def _desired(router: Router, pool_name: str) -> float:
    text = generate_latest(router.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tandem_pool_desired_replicas" and sample.labels["pool"] == pool_name:
                return sample.value
    raise AssertionError(f"no desired replicas for {pool_name}")


@pytest.mark.parametrize("chart", sorted(POOLS))
def test_the_query_gives_what_one_orchestrator_asks_for(
    rendered: dict[tuple[str, str], Rendered], chart: str
) -> None:
    query = _query(rendered[chart, "autoscaling-keda"])
    router = _orchestrator(prefill_tokens=60_000, kv_usage=0.7)
    desired = _desired(router, POOLS[chart])
    assert desired > 1  # the signals are busy: the bounds play no part

    [(labels, value)] = evaluate(query, _scraped({"127.0.0.11:8000": router})).items()

    assert labels == ()
    assert value == desired


def test_the_query_sums_what_replicas_route_and_counts_the_pods_once(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    chart = {name: rendered[name, "autoscaling-keda"] for name in POOLS}
    one = _orchestrator(prefill_tokens=60_000, kv_usage=0.7)
    other = _orchestrator(prefill_tokens=30_000, kv_usage=0.7)
    samples = _scraped({"127.0.0.11:8000": one, "127.0.0.12:8000": other})

    [prefill] = evaluate(_query(chart["tandem-prefill"]), samples).values()
    [decode] = evaluate(_query(chart["tandem-decode"]), samples).values()

    backlog = one.pool_needs()["prefill"].needs["prefill_backlog"]
    backlog += other.pool_needs()["prefill"].needs["prefill_backlog"]
    assert prefill == math.ceil(backlog)  # both shares of the queue, summed
    needs = one.pool_needs()["decode"].needs
    assert decode == _desired(one, "decode") == math.ceil(max(needs["kv"], needs["itl"]))


def test_the_orchestrator_exports_the_signals_for_the_profile_it_is_given(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    def scaling(scenario: str) -> ScalingConfig | None:
        data = rendered["tandem-orchestrator", scenario].configuration()["data"]
        return parse_orchestrator_config(yaml.safe_load(data["orchestrator.yaml"])).scaling

    assert scaling("defaults") is None  # no profile: no signals
    given = scaling("autoscaling-keda")
    assert given == ScalingConfig(
        profile="qwen3-32b-h100-tp2", pool_profiles={"decode": "llama-3.1-70b-h100-tp4"},
        ttft_s=1.5, max_replicas=12,
    )  # fmt: skip
