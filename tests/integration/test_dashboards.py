"""Every query of the shipped dashboards reads metrics a running deployment exposes: the
orchestrator's, a prefill pod's, and a decode pod's (its sidecar's, with its vLLM's)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_gateway import _healthy as healthy
from tests.integration.test_gateway import gateway
from tests.support.dashboards import DASHBOARDS, exposed_series, load, metric_names, queries
from tests.support.pd import MODEL, complete, pd_stack, words
from tests.support.servers import wait_until


@pytest.fixture(scope="module")
def expositions() -> dict[str, str]:
    """/metrics of each part of a P/D deployment that has served a disaggregated request."""
    with pd_stack() as pd:
        sidecar_port = int(pd.sidecar_url.rsplit(":", 1)[1])
        endpoints = [
            {"name": "prefill-0", "host": "127.0.0.1", "port": pd.prefill.port, "role": "prefill"},
            {"name": "decode-0", "host": "127.0.0.1", "port": sidecar_port, "role": "decode"},
        ]
        with gateway(endpoints, scaling={"profile": "llama-3.1-8b-h100-tp1"}) as url:
            assert wait_until(lambda: healthy(url) == 2)
            body = {"model": MODEL, "prompt": words(600), "max_tokens": 4}
            assert complete(url, body).status_code == 200
            # Through the sidecar with a prefill target: a remote prefill and a KV read.
            assert complete(pd.sidecar_url, body, prefiller=pd.prefill_address).status_code == 200
            return {
                "tandem-orchestrator": httpx.get(f"{url}/metrics", timeout=10).text,
                "tandem-prefill": httpx.get(f"{pd.prefill_url}/metrics", timeout=10).text,
                "tandem-decode": httpx.get(f"{pd.sidecar_url}/metrics", timeout=10).text,
            }


@pytest.mark.parametrize("chart", sorted(DASHBOARDS))
def test_every_query_reads_metrics_the_deployment_exposes(
    expositions: dict[str, str], chart: str
) -> None:
    exposed = exposed_series(expositions[chart])
    missing = {
        name
        for expr in queries(load(DASHBOARDS[chart]))
        for name in metric_names(expr)
        if name not in exposed
    }

    assert missing == set()


def test_the_check_sees_a_metric_no_one_exposes(expositions: dict[str, str]) -> None:
    exposed = exposed_series(expositions["tandem-decode"])

    assert "vllm:inter_token_latency_seconds_bucket" in exposed
    assert "tandem_sidecar_fallbacks_total" in exposed
    assert "vllm:inter_token_latency_seconds_total" not in exposed
    assert "tandem_requests_total" not in exposed  # the orchestrator's, not the sidecar's
