"""A request that a decode endpoint never started is sent to another one: the sidecar marks
its answer when its local vLLM refused the connection, and the gateway retries elsewhere."""

from __future__ import annotations

from contextlib import ExitStack

import httpx

from tandem.http.protocol import NOT_STARTED_HEADER
from tests.integration.test_gateway import _healthy as healthy
from tests.integration.test_gateway import gateway
from tests.support.pd import MODEL, running_sidecar, samples
from tests.support.servers import free_port, pod_config, running_pod, wait_until

NOT_STARTED = "tandem_upstream_errors_total{kind=not_started}"


def test_a_sidecar_whose_vllm_is_down_marks_its_answer_not_started() -> None:
    with running_sidecar(free_port()) as sidecar:
        reply = httpx.post(
            f"{sidecar.url}/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=10
        )
    assert reply.status_code == 503
    assert reply.headers[NOT_STARTED_HEADER] == "1"


def test_requests_a_dead_vllm_never_started_are_served_by_another_pod() -> None:
    dying, serving = pod_config(time_scale=0.05), pod_config(time_scale=0.05)
    dying_pod = ExitStack()
    dying_pod.enter_context(running_pod(dying))
    with (
        dying_pod,
        running_pod(serving),
        running_sidecar(dying.port) as first,
        running_sidecar(serving.port) as second,
    ):
        endpoints = [
            {"name": name, "host": "127.0.0.1", "port": int(url.rsplit(":", 1)[1]), "role": "both"}
            for name, url in (("a", first.url), ("b", second.url))
        ]
        # Round robin, so the dead pod's turn comes; scrapes far apart, so the gateway
        # still believes it healthy once its vLLM is gone.
        with gateway(endpoints, scheduler="round-robin", scrape={"interval_s": 60}) as url:
            assert wait_until(lambda: healthy(url) == 2)
            dying_pod.close()
            replies = [
                httpx.post(
                    f"{url}/v1/completions",
                    json={"model": MODEL, "prompt": f"request {i}", "max_tokens": 2},
                    timeout=30,
                )
                for i in range(4)
            ]
            counters = samples(url)

    assert [r.status_code for r in replies] == [200] * 4
    assert all(NOT_STARTED_HEADER not in r.headers for r in replies)
    assert counters[NOT_STARTED] >= 1
    assert second.own_samples()["tandem_sidecar_requests_total{mode=local}"] == 4
