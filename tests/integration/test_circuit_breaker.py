"""Circuit breakers on a live gateway: a decode endpoint that fails what it is sent, and a
prefill endpoint the sidecar reports failing, are taken out until a probe succeeds; a
sidecar whose vLLM is down is out after one scrape."""

from __future__ import annotations

from contextlib import ExitStack

import httpx

from tandem.http.protocol import SIDECAR_REPORT_HEADERS
from tests.integration.test_gateway import _healthy as healthy
from tests.integration.test_gateway import gateway
from tests.support.fakes import Recorder, recording_server
from tests.support.pd import (
    MODEL,
    fake_pd,
    fake_prefill,
    producer_params,
    running_sidecar,
    samples,
    words,
)
from tests.support.schedulers import disaggregating_tandem
from tests.support.servers import free_port, pod_config, running_pod, serve, wait_until

FAST_BREAKER = {"consecutive_failures": 3, "open_s": 0.5, "max_open_s": 5.0}


def state(counters: dict[str, float], endpoint: str) -> float:
    return counters[f"tandem_circuit_breaker_state{{endpoint={endpoint}}}"]


def post(url: str, prompt: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


def test_a_failing_decode_endpoint_is_opened_then_probed_back() -> None:
    good, bad = Recorder(), Recorder(status=500)
    ports = free_port(), free_port()
    with ExitStack() as stack:
        stack.enter_context(serve(recording_server(good), ports[0]))
        stack.enter_context(serve(recording_server(bad), ports[1]))
        endpoints = [
            {"name": name, "host": "127.0.0.1", "port": port, "role": "both"}
            for name, port in zip(("good", "bad"), ports, strict=True)
        ]
        url = stack.enter_context(
            gateway(endpoints, scheduler="round-robin", circuit_breaker=FAST_BREAKER)
        )
        assert wait_until(lambda: healthy(url) == 2)
        first = [post(url, f"first {i}").status_code for i in range(10)]
        opened = samples(url)
        assert len(bad.bodies) == 3
        later = [post(url, f"later {i}").status_code for i in range(4)]
        assert len(bad.bodies) == 3  # open: nothing reaches it
        bad.status = 200
        # After open_s one request probes it; its success closes the breaker.
        assert wait_until(lambda: post(url, "probe").status_code == 200 and len(bad.bodies) == 4)
        closed = samples(url)
        after = [post(url, f"after {i}").status_code for i in range(4)]

    assert first.count(500) == 3
    assert first.count(200) == 7
    assert state(opened, "bad") == 1
    assert state(opened, "good") == 0
    assert opened["tandem_circuit_breaker_opened_total{endpoint=bad}"] == 1
    assert later == [200] * 4
    assert state(closed, "bad") == 0
    assert after == [200] * 4
    assert len(bad.bodies) == 6  # round robin again


def test_a_prefill_endpoint_the_sidecar_reports_failing_is_opened() -> None:
    failing = Recorder(status=503)
    failing_port = free_port()
    with ExitStack() as stack:
        fakes = stack.enter_context(fake_pd(producer_params(free_port())))
        stack.enter_context(serve(fake_prefill(failing, fakes.params), failing_port))
        sidecar = stack.enter_context(running_sidecar(fakes.vllm_port, (failing_port,)))
        sidecar_port = int(sidecar.url.rsplit(":", 1)[1])
        endpoints = [
            {"name": "prefill", "host": "127.0.0.1", "port": failing_port, "role": "prefill"},
            {"name": "decode", "host": "127.0.0.1", "port": sidecar_port, "role": "decode"},
        ]
        url = stack.enter_context(
            gateway(endpoints, scheduler=disaggregating_tandem(), circuit_breaker=FAST_BREAKER)
        )
        assert wait_until(lambda: healthy(url) == 2)
        replies = [post(url, words(600, offset=40 * i)) for i in range(6)]
        counters = samples(url)

    # The sidecar fell back to local prefill each time (the default policy), so every
    # request was served; its reports opened the prefill endpoint's breaker after three.
    assert [r.status_code for r in replies] == [200] * 6
    assert len(failing.bodies) == 3
    assert state(counters, "prefill") == 1
    assert state(counters, "decode") == 0
    assert all(name not in r.headers for r in replies for name in SIDECAR_REPORT_HEADERS)


def test_a_sidecar_whose_vllm_died_is_out_after_one_scrape() -> None:
    pods = [pod_config(time_scale=0.05) for _ in range(2)]
    dying = ExitStack()
    with ExitStack() as stack:
        dying.enter_context(running_pod(pods[0]))
        stack.enter_context(running_pod(pods[1]))
        sidecars = [stack.enter_context(running_sidecar(pod.port)) for pod in pods]
        endpoints = [
            {"name": f"decode-{i}", "host": "127.0.0.1", "port": int(s.url.rsplit(":", 1)[1]),
             "role": "both"}
            for i, s in enumerate(sidecars)
        ]  # fmt: skip
        # A timeout needs two failed scrapes; scrapes a second apart leave time to read the
        # failure count at the moment the pod goes out.
        url = stack.enter_context(
            gateway(endpoints, scheduler="round-robin", scrape={"interval_s": 1.0})
        )
        assert wait_until(lambda: healthy(url) == 2)
        dying.close()
        assert wait_until(lambda: healthy(url) == 1, timeout_s=5)
        scrape_errors = samples(url)["tandem_scrape_errors_total{endpoint=decode-0}"]
        own = sidecars[0].own_samples()
        replies = [post(url, f"after {i}") for i in range(4)]

    assert scrape_errors == 1
    assert own["tandem_sidecar_vllm_up{}"] == 0
    assert [r.status_code for r in replies] == [200] * 4
    assert sidecars[1].own_samples()["tandem_sidecar_requests_total{mode=local}"] == 4
