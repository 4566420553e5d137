"""A prefill pod stopped by SIGTERM while decoders have yet to read its KV: it refuses new
connections at once, and keeps its KV side channel up until every held block set has been
read, then exits 0. The pod is a `tandem sim` process; the decode pod and its sidecar run here."""

from __future__ import annotations

import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.pd import (
    BY_SOURCE,
    MODEL,
    address,
    complete,
    decode_config,
    running_sidecar,
    samples,
    words,
)
from tests.support.processes import sim_process
from tests.support.servers import running_pod, wait_until

REQUESTS = 4
PROMPT_TOKENS = 200
READ_DELAY_S = 2.0
"""The decode pod takes up each request this long after it arrives, so the prefill pod still
holds every request's KV when it is told to stop."""


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def prefills_answered(url: str) -> float:
    return samples(url).get("vllm:request_success_total{finished_reason=length}", 0.0)


def test_a_prefill_pod_stopped_with_kv_held_serves_every_read_before_it_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The side channel the pod advertises to decoders: loopback, as vLLM's variable sets it.
    monkeypatch.setenv("VLLM_NIXL_SIDE_CHANNEL_HOST", "127.0.0.1")
    log = tmp_path / "prefill.log"
    no_events = '{"enable_kv_cache_events": false}'
    decode = decode_config(faults={"added_latency_s": READ_DELAY_S})
    with (
        sim_process(log, "--role", "prefill", "--kv-events-config", no_events) as (process, port),
        running_pod(decode) as decode_url,
        running_sidecar(decode.port, (port,)) as sidecar,
        ThreadPoolExecutor(REQUESTS) as pool,
    ):
        prefill_url = f"http://{address(port)}"
        replies = [
            pool.submit(
                complete,
                sidecar.url,
                {"model": MODEL, "prompt": words(PROMPT_TOKENS, 100 * i), "max_tokens": 4},
                address(port),
            )
            for i in range(REQUESTS)
        ]
        held = wait_until(lambda: prefills_answered(prefill_url) == REQUESTS, timeout_s=10)
        process.send_signal(signal.SIGTERM)
        refused = wait_until(lambda: refuses_connections(port), timeout_s=READ_DELAY_S / 2)
        draining = process.poll() is None
        answers = [reply.result() for reply in replies]
        returncode = process.wait(timeout=20)
        read = samples(decode_url)
        own = sidecar.own_samples()

    output = log.read_text()
    assert held, output
    assert refused, output
    assert draining, output  # refusing connections while its KV was still to be read
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 4
    # Every decode loaded its prompt from the prefill pod, none fell back to computing it.
    assert own["tandem_sidecar_requests_total{mode=disaggregated}"] == REQUESTS
    assert not any(key.startswith("tandem_sidecar_fallbacks_total") for key in own)
    assert read["vllm:nixl_bytes_transferred_count{}"] == REQUESTS
    assert read["vllm:nixl_num_failed_transfers_total{}"] == 0
    assert read[f"{BY_SOURCE}{{source=external_kv_transfer}}"] == REQUESTS * PROMPT_TOKENS
    assert read[f"{BY_SOURCE}{{source=local_compute}}"] == 0
    # It exited once every hold had been read, none left to its lease.
    assert returncode == 0, output
    assert f"kv_drained held={REQUESTS} expired=0 left=0" in output
