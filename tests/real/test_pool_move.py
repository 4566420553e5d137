"""A real pod moves between the pools while the cluster serves: prefill-1 (`kv_producer`) is
drained and restarted in its slot as decode-1 (`kv_consumer`, behind a sidecar), requests
sent meanwhile all complete, the new decode pod reads a prefill's KV over NIXL, and every pod
ends with its KV free."""

from __future__ import annotations

import threading

import httpx

from tests.real.conftest import KV_LEASE_S, REQUEST_TIMEOUT_S, RealCluster
from tests.support.pd import BY_SOURCE, MODEL, complete, delta, samples, words
from tests.support.servers import wait_until

EXTERNAL = f"{BY_SOURCE}{{source=external_kv_transfer}}"


def test_a_real_prefill_pod_restarts_as_a_decode_pod_while_the_cluster_serves(
    elastic: RealCluster,
) -> None:
    cluster = elastic.cluster
    mover = cluster.mover
    assert mover is not None
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        offset = 700
        # A request every two seconds: the new pod's engine starts on the same two cores.
        while not stop.wait(2.0):
            body = {"model": MODEL, "prompt": words(300, offset), "max_tokens": 8}
            statuses.append(complete(elastic.url, body, timeout=REQUEST_TIMEOUT_S).status_code)
            offset += 1

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        move = mover.request_move("prefill-1", "decode").result(timeout=1200)
    finally:
        stop.set()
        sender.join(REQUEST_TIMEOUT_S)

    assert (move.pod, move.new_pod) == ("prefill-1", "decode-1")
    assert statuses
    assert set(statuses) == {200}
    assert cluster.serving() == {"prefill": ["prefill-0"], "decode": ["decode-0", "decode-1"]}

    # The new pod is a consumer: its sidecar prefills on prefill-0, its vLLM reads the KV.
    new_decode = elastic.component_url("decode-1-vllm")
    before = samples(new_decode)
    body = {"model": MODEL, "prompt": words(600, 911), "max_tokens": 4}
    response = complete(
        elastic.component_url("decode-1"), body, prefiller=elastic.address("prefill-0"),
        timeout=REQUEST_TIMEOUT_S,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert delta(before, samples(new_decode), EXTERNAL) == response.json()["usage"]["prompt_tokens"]

    def idle() -> bool:
        pods = ("prefill-0", "decode-0-vllm", "decode-1-vllm")
        return all(
            samples(elastic.component_url(pod))["vllm:kv_cache_usage_perc{}"] == 0
            and samples(elastic.component_url(pod))["vllm:num_requests_running{}"] == 0
            for pod in pods
        )

    assert wait_until(idle, timeout_s=KV_LEASE_S + 10, interval_s=0.5)
    orchestrator = httpx.get(f"{elastic.url}/metrics", timeout=10).text
    assert 'tandem_pool_replicas{pool="decode"} 2.0' in orchestrator
