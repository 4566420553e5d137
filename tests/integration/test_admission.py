"""Admission control on a live gateway: requests past the pool's room wait and are served in
turn, refusals are 429s in OpenAI's shape that say why, and a bad priority is a 400."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import yaml

from tests.integration.test_gateway import gateway, ready
from tests.support.fakes import Recorder, recording_server
from tests.support.pd import MODEL, samples
from tests.support.schedulers import CONFIG_DIR
from tests.support.servers import free_port, serve, wait_until


def one_at_a_time() -> dict[str, Any]:
    """tandem.yaml with room for one request per decode endpoint."""
    document: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "tandem.yaml").read_text())
    document["saturationDetector"] = {"maxRequestsPerEndpoint": 1}
    return document


def post(url: str, name: str, priority: str | None = None) -> httpx.Response:
    headers = {"x-tandem-priority": priority} if priority else {}
    body = {"model": MODEL, "prompt": name, "max_tokens": 2}
    return httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=30)


def test_requests_past_the_room_wait_their_turn_or_are_refused_with_a_reason() -> None:
    slow = Recorder(delay_s=0.5)
    port = free_port()
    endpoints = [{"name": "decode-0", "host": "127.0.0.1", "port": port, "role": "both"}]
    with (
        serve(recording_server(slow), port),
        gateway(endpoints, scheduler=one_at_a_time(), admission={"max_wait_s": 10}) as url,
        ThreadPoolExecutor(max_workers=4) as pool,
    ):
        assert wait_until(lambda: ready(url))
        first = pool.submit(post, url, "first")
        assert wait_until(lambda: len(slow.headers) == 1)
        waiting = [pool.submit(post, url, f"waiting {i}") for i in range(2)]
        assert wait_until(lambda: samples(url).get("tandem_admission_queue_length{pool=decode}")
                          == 2)  # fmt: skip
        shed = post(url, "shed", "sheddable")
        served = [first.result().status_code] + [w.result().status_code for w in waiting]
        bad = post(url, "bad", "urgent")
        counters = samples(url)

    assert served == [200, 200, 200]
    assert len(slow.headers) == 3  # one at a time: none was sent while another ran
    assert shed.status_code == 429
    assert shed.headers["x-tandem-reject-reason"] == "shed"
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["error"]["type"] == "RateLimitError"
    assert "sheddable" in shed.json()["error"]["message"]
    assert bad.status_code == 400
    assert "x-tandem-priority must be one of" in bad.json()["error"]["message"]
    assert counters["tandem_admission_requests_total{outcome=admitted,priority=standard}"] == 3
    assert counters["tandem_admission_requests_total{outcome=shed,priority=sheddable}"] == 1
    assert counters["tandem_admission_wait_seconds_count{}"] == 2
    assert counters["tandem_rejected_requests_total{reason=shed}"] == 1
