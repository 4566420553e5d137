"""The whole P/D path on real engines: the official `openai` client → orchestrator → sidecar
→ real prefill pod → NIXL (UCX, host memory) → real decode pod."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from openai import OpenAI

from tests.real.conftest import KV_LEASE_S, REQUEST_TIMEOUT_S, RealCluster
from tests.support.pd import BY_SOURCE, MODEL, complete, delta, open_request, samples
from tests.support.pd import words as synthetic_words
from tests.support.servers import free_port, wait_until

EXTERNAL = f"{BY_SOURCE}{{source=external_kv_transfer}}"
LOCAL = f"{BY_SOURCE}{{source=local_compute}}"
CACHE_HIT = f"{BY_SOURCE}{{source=local_cache_hit}}"
NIXL_BYTES = "vllm:nixl_bytes_transferred_sum{}"
SIDECAR = "tandem_sidecar_requests_total"
REMOTE = "tandem_pd_decisions_total{decision=disaggregate,reason=uncached_above_threshold}"
SHORT = "tandem_pd_decisions_total{decision=local,reason=uncached_below_threshold}"

_offsets = iter(range(0, 1000, 37))


def words(count: int) -> str:
    """A prompt of `count` words of the tiny model's vocabulary that no other test sends."""
    return synthetic_words(count, next(_offsets))


def client(pd: RealCluster) -> OpenAI:
    return OpenAI(
        base_url=f"{pd.url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )


def test_completion_is_disaggregated(pd_cluster: RealCluster) -> None:
    decode, sidecar = (
        pd_cluster.component_url("decode-0-vllm"),
        pd_cluster.component_url("decode-0"),
    )
    before, gateway_before = samples(decode), samples(pd_cluster.url)
    sidecar_before = samples(sidecar)

    completion = client(pd_cluster).completions.create(model=MODEL, prompt=words(600), max_tokens=8)

    after, gateway_after = samples(decode), samples(pd_cluster.url)
    prompt_tokens = completion.usage.prompt_tokens if completion.usage else 0
    assert prompt_tokens == 601  # one token a word, and the BOS
    assert completion.choices[0].finish_reason == "length"
    assert delta(gateway_before, gateway_after, REMOTE) == 1
    assert delta(sidecar_before, samples(sidecar), f"{SIDECAR}{{mode=disaggregated}}") == 1
    # the decode pod read every prompt token's KV over NIXL and computed none of them
    assert delta(before, after, EXTERNAL) == prompt_tokens
    assert delta(before, after, LOCAL) == 0
    assert delta(before, after, NIXL_BYTES) > 0


def test_streaming_chat_is_disaggregated(pd_cluster: RealCluster) -> None:
    decode = pd_cluster.component_url("decode-0-vllm")
    before = samples(decode)

    stream = client(pd_cluster).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": words(500)}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    [usage] = [c.usage for c in chunks if c.usage is not None]
    assert text
    assert finish == ["length"]
    assert usage.completion_tokens == 12
    after = samples(decode)
    assert delta(before, after, EXTERNAL) == usage.prompt_tokens
    assert delta(before, after, LOCAL) == 0


def test_short_prompt_prefills_on_the_decode_pod(pd_cluster: RealCluster) -> None:
    decode = pd_cluster.component_url("decode-0-vllm")
    before, gateway_before = samples(decode), samples(pd_cluster.url)

    completion = client(pd_cluster).completions.create(model=MODEL, prompt=words(40), max_tokens=4)

    after = samples(decode)
    assert completion.usage is not None
    assert delta(gateway_before, samples(pd_cluster.url), SHORT) == 1
    assert delta(before, after, EXTERNAL) == 0
    assert delta(before, after, LOCAL) == completion.usage.prompt_tokens


def test_cached_prompt_prefills_on_the_decode_pod(pd_cluster: RealCluster) -> None:
    """A prompt whose KV the decode pod already holds (it read it for the first request)
    is not prefilled again anywhere: the second request takes the local path and hits."""
    decode = pd_cluster.component_url("decode-0-vllm")
    prompt = words(600)
    first = client(pd_cluster).completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    before, gateway_before = samples(decode), samples(pd_cluster.url)

    second = client(pd_cluster).completions.create(model=MODEL, prompt=prompt, max_tokens=2)

    after = samples(decode)
    assert first.usage is not None
    assert second.usage is not None
    assert delta(gateway_before, samples(pd_cluster.url), SHORT) == 1
    assert delta(before, after, EXTERNAL) == 0
    assert delta(before, after, CACHE_HIT) >= 576  # every full 32-token block of the prompt
    details = second.usage.prompt_tokens_details
    assert details is not None
    assert details.cached_tokens == delta(before, after, CACHE_HIT)


def test_a_prefill_pod_serves_a_whole_request(pd_cluster: RealCluster) -> None:
    """What the elastic decider's whole-on-prefill placement relies on: a `kv_producer` pod
    serves a request that carries no `kv_transfer_params` as any pod would (every prompt
    token computed and every answer token generated there) and holds no KV for a decoder
    once it has answered."""
    prefill = pd_cluster.component_url("prefill-0")
    whole = OpenAI(
        base_url=f"{prefill}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )
    before = samples(prefill)

    completion = whole.completions.create(model=MODEL, prompt=words(600), max_tokens=8)

    after = samples(prefill)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert delta(before, after, LOCAL) == completion.usage.prompt_tokens
    assert delta(before, after, "vllm:generation_tokens_total{}") == 8
    assert wait_until(lambda: _idle(pd_cluster), timeout_s=10, interval_s=0.5)


def _idle(pd: RealCluster) -> bool:
    prefill, decode = (
        samples(pd.component_url("prefill-0")),
        samples(pd.component_url("decode-0-vllm")),
    )
    return (
        prefill["vllm:num_requests_running{}"] == 0
        and decode["vllm:num_requests_running{}"] == 0
        and prefill["vllm:kv_cache_usage_perc{}"] == 0
        and decode["vllm:num_requests_waiting{}"] == 0
    )


def test_client_gone_mid_decode_frees_both_pods(pd_cluster: RealCluster) -> None:
    decode = pd_cluster.component_url("decode-0-vllm")
    body = {
        "model": MODEL, "prompt": words(600), "max_tokens": 3000, "ignore_eos": True,
        "stream": True,
    }  # fmt: skip
    before, gateway_before = samples(decode), samples(pd_cluster.url)
    with open_request(pd_cluster.url, "/v1/completions", body) as connection:
        connection.settimeout(REQUEST_TIMEOUT_S)
        received = b""
        while received.count(b"data: ") < 4:
            received += connection.recv(65536)
        decisions = {
            name: value
            for name, value in samples(pd_cluster.url).items()
            if name.startswith("tandem_pd_decisions_total")
            and value != gateway_before.get(name, 0.0)
        }
        assert decisions == {REMOTE: gateway_before.get(REMOTE, 0.0) + 1}
        assert samples(decode)["vllm:num_requests_running{}"] == 1

    assert wait_until(lambda: _idle(pd_cluster), timeout_s=KV_LEASE_S + 10, interval_s=0.5)
    generated = delta(before, samples(decode), "vllm:generation_tokens_total{}")
    assert 0 < generated < 3000  # stopped when the client left, not run to the end


def test_client_gone_mid_prefill_frees_both_pods(pd_cluster: RealCluster) -> None:
    body = {"model": MODEL, "prompt": words(3500), "max_tokens": 50, "stream": True}
    with open_request(pd_cluster.url, "/v1/completions", body):
        time.sleep(0.05)  # the prefill of 3,500 tokens takes longer than this

    assert wait_until(lambda: _idle(pd_cluster), timeout_s=KV_LEASE_S + 10, interval_s=0.5)


@contextmanager
def listener() -> Iterator[tuple[int, list[object]]]:
    """A TCP port that records every connection made to it."""
    accepted: list[object] = []
    server = socket.create_server(("127.0.0.1", free_port()))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, peer = server.accept()
            except TimeoutError:
                continue
            accepted.append(peer)
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_prefill_target_outside_the_allowlist_is_never_contacted(
    pd_cluster: RealCluster,
) -> None:
    sidecar = pd_cluster.component_url("decode-0")
    with listener() as (port, accepted):
        response = complete(
            sidecar,
            {"model": MODEL, "prompt": words(600), "max_tokens": 2},
            prefiller=f"127.0.0.1:{port}",
            timeout=REQUEST_TIMEOUT_S,
        )
        time.sleep(0.5)
    assert response.status_code == 403
    assert "not a known prefill endpoint" in response.json()["error"]["message"]
    assert accepted == []


def test_prefill_pod_killed_falls_back_to_local_prefill(dying_prefill: RealCluster) -> None:
    sidecar = dying_prefill.component_url("decode-0")
    decode = dying_prefill.component_url("decode-0-vllm")
    dying_prefill.cluster.kill("prefill-0")
    before, sidecar_before = samples(decode), samples(sidecar)

    response = complete(
        sidecar,
        {"model": MODEL, "prompt": words(600), "max_tokens": 4},
        prefiller=dying_prefill.address("prefill-0"),
        timeout=REQUEST_TIMEOUT_S,
    )

    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4
    assert delta(sidecar_before, samples(sidecar), f"{SIDECAR}{{mode=fallback}}") == 1
    assert delta(before, samples(decode), LOCAL) == 601
