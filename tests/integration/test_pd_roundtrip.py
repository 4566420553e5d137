"""A P/D round trip by hand between two simulated pods, as vLLM's NixlConnector does it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tandem.kvcache.tokenizer import SYNTHETIC_WORDS
from tandem.simulator.config import SimPodConfig
from tests.support.servers import pod_config, running_pod, scrape, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def make_prompt(offset: int) -> str:
    """1000 synthetic tokens; different offsets share no prefix block."""
    return " " + " ".join(SYNTHETIC_WORDS[(offset + i * 7) % 1000] for i in range(1000))


PROMPT = make_prompt(0)
KV_BYTES_PER_TOKEN = 131072  # Llama-3.1-8B: 2 x 32 layers x 8 KV heads x 128 x 2 bytes

# What vLLM's toy proxy and llm-d's sidecar send to the prefill pod.
PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def prefill_config(**overrides: Any) -> SimPodConfig:
    return pod_config(
        **({"role": "prefill", "kv_role": "kv_producer", "time_scale": 0.05} | overrides)
    )


def decode_config(**overrides: Any) -> SimPodConfig:
    return pod_config(
        **({"role": "decode", "kv_role": "kv_consumer", "time_scale": 0.05} | overrides)
    )


@pytest.fixture(scope="module")
def prefill_url() -> Iterator[str]:
    with running_pod(prefill_config()) as url:
        yield url


def prefill(url: str, request_id: str, prompt: str = PROMPT) -> dict[str, Any]:
    reply = httpx.post(
        f"{url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": 1,
            "stream": False,
            "kv_transfer_params": PREFILL_PARAMS,
        },
        headers={"x-request-id": request_id},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def decode(
    url: str, request_id: str, params: dict[str, Any], prompt: str = PROMPT, **extra: Any
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 8, "kv_transfer_params": params}
        | extra,
        headers={"x-request-id": request_id},
        timeout=30,
    )


def test_prefill_returns_nixl_params_and_holds_the_blocks(prefill_url: str) -> None:
    body = prefill(prefill_url, "rt-hold")
    params = body["kv_transfer_params"]

    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 1
    assert params["do_remote_prefill"] is True
    assert params["do_remote_decode"] is False
    assert params["remote_request_id"].startswith("cmpl-rt-hold-0-")
    assert params["remote_num_tokens"] == 1000
    assert len(params["remote_block_ids"]) == 1  # one KV-cache group
    assert len(params["remote_block_ids"][0]) == 63  # ceil(1000 / 16)
    assert params["transfer_mode"] == "pull"
    assert set(params) >= {"remote_engine_id", "remote_host", "remote_port", "tp_size"}
    assert scrape(prefill_url)["vllm:kv_cache_usage_perc{}"] > 0


def test_round_trip_transfers_the_prompt_and_frees_the_producer(prefill_url: str) -> None:
    with running_pod(decode_config()) as decode_url:
        prompt = make_prompt(1)
        params = prefill(prefill_url, "rt-1", prompt)["kv_transfer_params"]
        reply = decode(decode_url, "rt-1", params, prompt)

        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["usage"]["prompt_tokens"] == 1000
        assert body["usage"]["completion_tokens"] == 8
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # P's hits
        assert body["kv_transfer_params"] is None
        metrics = scrape(decode_url)
        by_source = "vllm:prompt_tokens_by_source_total"
        assert metrics[f"{by_source}{{source=external_kv_transfer}}"] == 1000
        assert metrics[f"{by_source}{{source=local_compute}}"] == 0
        assert metrics["vllm:nixl_bytes_transferred_count{}"] == 1
        assert metrics["vllm:nixl_bytes_transferred_sum{}"] == 1000 * KV_BYTES_PER_TOKEN
        assert metrics["vllm:nixl_xfer_time_seconds_count{}"] == 1
        # The consumer's "done" notification makes the producer free the held blocks.
        assert wait_until(lambda: scrape(prefill_url)["vllm:kv_cache_usage_perc{}"] == 0)


def test_prefill_cache_hits_reach_the_client_through_the_decoder(prefill_url: str) -> None:
    with running_pod(decode_config()) as decode_url:
        prompt = make_prompt(2)
        first = prefill(prefill_url, "rt-warm-1", prompt)["kv_transfer_params"]
        assert decode(decode_url, "rt-warm-1", first, prompt).status_code == 200
        second = prefill(prefill_url, "rt-warm-2", prompt)["kv_transfer_params"]
        reply = decode(decode_url, "rt-warm-2", second, prompt)

        assert second["remote_prefill_cached_tokens"] == 992  # 62 full blocks of 1000 tokens
        assert reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 992


def test_second_decode_with_the_same_params_fails(prefill_url: str) -> None:
    with running_pod(decode_config()) as decode_url:
        params = prefill(prefill_url, "rt-twice")["kv_transfer_params"]
        assert decode(decode_url, "rt-twice-a", params).status_code == 200
        reply = decode(decode_url, "rt-twice-b", params)

        assert reply.status_code == 500
        assert reply.json() == {
            "error": {
                "message": "Internal server error",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
        }
        assert scrape(decode_url)["vllm:nixl_num_failed_transfers_total{}"] >= 1


def test_streamed_decode_failure_is_an_error_event(prefill_url: str) -> None:
    with running_pod(decode_config()) as decode_url:
        params = prefill(prefill_url, "rt-stream")["kv_transfer_params"]
        assert decode(decode_url, "rt-stream-a", params).status_code == 200
        reply = decode(decode_url, "rt-stream-b", params, stream=True)

        assert reply.status_code == 200
        events = [line for line in reply.text.splitlines() if line]
        assert events == [
            'data: {"error": {"message": "Internal server error", "type": '
            '"InternalServerError", "param": null, "code": 500}}',
            "data: [DONE]",
        ]


def test_recompute_policy_prefills_locally_when_the_kv_is_gone(prefill_url: str) -> None:
    with running_pod(decode_config(kv_load_failure_policy="recompute")) as decode_url:
        params = prefill(prefill_url, "rt-recompute")["kv_transfer_params"]
        assert decode(decode_url, "rt-recompute-a", params).status_code == 200
        reply = decode(decode_url, "rt-recompute-b", params)

        assert reply.status_code == 200
        assert reply.json()["usage"]["completion_tokens"] == 8
        metrics = scrape(decode_url)
        assert metrics["vllm:nixl_num_failed_transfers_total{}"] >= 1


def test_unread_kv_expires_after_the_lease() -> None:
    with running_pod(prefill_config(kv_lease_duration=1, time_scale=1.0)) as url:
        prefill(url, "rt-expire")
        assert scrape(url)["vllm:kv_cache_usage_perc{}"] > 0

        assert wait_until(
            lambda: scrape(url)["vllm:nixl_num_kv_expired_reqs_total{}"] == 1, timeout_s=10
        )
        assert scrape(url)["vllm:kv_cache_usage_perc{}"] == 0


def test_decoder_heartbeats_keep_queued_kv_alive() -> None:
    """A decode request queued behind others keeps the producer's lease alive until read."""
    with (
        running_pod(prefill_config(kv_lease_duration=6, time_scale=0.5)) as p_url,
        running_pod(decode_config(kv_lease_duration=6, time_scale=0.5, max_num_seqs=1)) as d_url,
        httpx.Client(timeout=60) as client,
    ):
        params = prefill(p_url, "rt-hb")["kv_transfer_params"]
        # Occupy the decoder's only sequence slot for ~8 s of model time (> the 6 s lease).
        blocker = client.build_request(
            "POST",
            f"{d_url}/v1/completions",
            json={
                "model": MODEL,
                "prompt": "busy",
                "max_tokens": 1200,
                "ignore_eos": True,
                "stream": True,
            },
        )
        blocking = client.send(blocker, stream=True)
        try:
            reply = decode(d_url, "rt-hb", params)
        finally:
            blocking.close()

        assert reply.status_code == 200, reply.text
        assert scrape(p_url)["vllm:nixl_num_kv_expired_reqs_total{}"] == 0


@pytest.mark.parametrize(
    "bad",
    [{"max_tokens": 10**6}, {"temperature": -1}, {"model": "other"}],
    ids=["max_tokens", "temperature", "model"],
)
def test_a_decode_refused_before_the_engine_frees_the_producers_blocks(
    bad: dict[str, Any],
) -> None:
    # vLLM's serving layer tells the connector about a remote-prefill request it rejected, and
    # the connector tells the producer to free the blocks instead of letting the lease run out.
    with (
        running_pod(prefill_config(kv_lease_duration=600)) as producer_url,
        running_pod(decode_config()) as decode_url,
    ):
        params = prefill(producer_url, "rt-rejected", make_prompt(5))["kv_transfer_params"]
        assert scrape(producer_url)["vllm:kv_cache_usage_perc{}"] > 0

        reply = decode(decode_url, "rt-rejected", params, make_prompt(5), **bad)

        assert reply.status_code in (400, 404), reply.text
        assert wait_until(lambda: scrape(producer_url)["vllm:kv_cache_usage_perc{}"] == 0)
        assert scrape(producer_url)["vllm:nixl_num_kv_expired_reqs_total{}"] == 0
        assert scrape(decode_url)["vllm:request_success_total{finished_reason=abort}"] == 0
