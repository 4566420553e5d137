"""A client that goes away stops everything it started: the prefill, or the decode, and no
request keeps running. KV that a prefill pod holds for a decode that never reads it is
counted as an orphan by the sidecar and freed by the producer's lease."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests.support.fakes import Recorder
from tests.support.pd import (
    MODEL,
    PREFILLER,
    address,
    complete,
    decode_config,
    fake_vllm,
    open_request,
    pd_stack,
    prefill_config,
    running_sidecar,
    samples,
    server_load,
    words,
)
from tests.support.servers import free_port, running_pod, serve, wait_until

RUNNING = "vllm:num_requests_running{}"
ABORTED = "vllm:request_success_total{finished_reason=abort}"
ORPHANS = "tandem_sidecar_orphaned_prefills_total{}"
EXPIRED = "vllm:nixl_num_kv_expired_reqs_total{}"


def idle(url: str) -> bool:
    """Nothing running, waiting or in flight on the pod, and no KV in use."""
    now = samples(url)
    return (
        now[RUNNING] == 0
        and now["vllm:num_requests_waiting{}"] == 0
        and now["vllm:kv_cache_usage_perc{}"] == 0
        and server_load(url) == 0
    )


def test_a_client_leaving_during_prefill_cancels_the_prefill() -> None:
    # 1000 prompt tokens in 64-token chunks at 20x the modelled time: the prefill runs for
    # about two seconds, step by step, so it is still running when the client leaves.
    prefill = prefill_config(time_scale=20.0, max_num_batched_tokens=64)
    vllm, vllm_port = Recorder(), free_port()
    with (
        running_pod(prefill) as prefill_url,
        serve(fake_vllm(vllm, cached_tokens=0), vllm_port),
        running_sidecar(vllm_port, (prefill.port,)) as running,
    ):
        body = {"model": MODEL, "prompt": words(1000), "max_tokens": 4}
        with open_request(running.url, "/v1/completions", body, {PREFILLER: address(prefill.port)}):
            started = wait_until(lambda: samples(prefill_url)[RUNNING] == 1)
        cancelled = wait_until(lambda: samples(prefill_url)[ABORTED] == 1)
        freed = wait_until(lambda: idle(prefill_url))
        own = running.own_samples()

    assert started
    assert cancelled
    assert freed
    assert vllm.bodies == []  # the decode never started
    assert own[ORPHANS] == 0  # a cancelled prefill holds no KV
    assert not any(key.startswith("tandem_sidecar_fallbacks_total") for key in own)


@pytest.mark.parametrize("stream", [pytest.param(False, id="json"), pytest.param(True, id="sse")])
def test_a_client_leaving_during_decode_aborts_the_decode(stream: bool) -> None:
    decode = decode_config(time_scale=1.0)
    with pd_stack(decode=decode) as pd:
        body = {
            "model": MODEL,
            "prompt": words(500),
            "max_tokens": 2000,
            "ignore_eos": True,
            "stream": stream,
        }
        with open_request(pd.sidecar_url, "/v1/completions", body, {PREFILLER: pd.prefill_address}):
            decoding = wait_until(lambda: samples(pd.decode_url)[RUNNING] == 1)
            # The decode read the KV, so the producer has already let it go.
            read = wait_until(lambda: samples(pd.prefill_url)["vllm:kv_cache_usage_perc{}"] == 0)
        aborted = wait_until(lambda: samples(pd.decode_url)[ABORTED] == 1)
        freed = wait_until(lambda: idle(pd.decode_url))
        prefill, sidecar = samples(pd.prefill_url), samples(pd.sidecar_url)

    assert decoding
    assert read
    assert aborted
    assert freed
    assert prefill[EXPIRED] == 0  # released on read, not by the lease
    assert prefill[ABORTED] == 0
    assert sidecar[ORPHANS] == 0


@pytest.mark.parametrize("how", ["vllm-down", "client-left-before-decode"])
def test_a_prefill_no_decode_read_is_an_orphan_freed_by_its_lease(how: str) -> None:
    prefill = prefill_config(kv_lease_duration=1, time_scale=1.0)
    body = {"model": MODEL, "prompt": words(200), "max_tokens": 4}
    with ExitStack() as stack:
        prefill_url = stack.enter_context(running_pod(prefill))
        if how == "vllm-down":
            running = stack.enter_context(running_sidecar(free_port(), (prefill.port,)))
            reply = complete(running.url, body, address(prefill.port))
            assert reply.status_code == 503
        else:
            hung_decode = decode_config(faults={"hang_rate": 1.0})
            decode_url = stack.enter_context(running_pod(hung_decode))
            running = stack.enter_context(running_sidecar(hung_decode.port, (prefill.port,)))
            header = {PREFILLER: address(prefill.port)}
            with open_request(running.url, "/v1/completions", body, header):
                assert wait_until(lambda: server_load(decode_url) == 1)  # decode hangs
            assert wait_until(lambda: server_load(decode_url) == 0)  # and was let go
        # vLLM had the handle: it aborts the request and tells the producer (vLLM's lease
        # design), so the sidecar counts no orphan. The simulated hang holds the request
        # before its engine sees it, so here the producer's lease is what frees the KV.
        orphans = 1 if how == "vllm-down" else 0
        counted = wait_until(lambda: running.own_samples()[ORPHANS] == orphans)
        expired = wait_until(lambda: samples(prefill_url)[EXPIRED] == 1, timeout_s=10)
        after = samples(prefill_url)

    assert counted
    assert expired
    assert after["vllm:kv_cache_usage_perc{}"] == 0
