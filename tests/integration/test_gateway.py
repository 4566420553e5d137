"""The gateway on loopback, in front of simulated pods and fake endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tandem.kvcache.tokenizer import SYNTHETIC_WORDS
from tandem.orchestrator.app import create_app
from tandem.orchestrator.config import parse_orchestrator_config
from tests.support.fakes import Recorder, recording_server
from tests.support.schedulers import disaggregating_tandem
from tests.support.servers import free_port, pod_config, running_pod, scrape, serve, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def words(count: int, offset: int = 0) -> str:
    return " " + " ".join(SYNTHETIC_WORDS[(offset + 3 * i) % 1000] for i in range(count))


@contextmanager
def gateway(
    endpoints: list[dict[str, Any]],
    transport: httpx.AsyncBaseTransport | None = None,
    **extra: Any,
) -> Iterator[str]:
    """A gateway over these endpoints on a free port."""
    port = free_port()
    config = parse_orchestrator_config(
        {"endpoints": endpoints, "gateway": {"port": port}, "scrape": {"interval_s": 0.1},
         "seed": 7} | extra
    )  # fmt: skip
    with serve(create_app(config, transport=transport), port) as url:
        yield url


def ready(url: str) -> bool:
    return httpx.get(f"{url}/ready", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def aggregated() -> Iterator[str]:
    """Two simulated aggregated pods behind the gateway."""
    with ExitStack() as stack:
        endpoints = []
        for index in range(2):
            config = pod_config(time_scale=0.05)
            stack.enter_context(running_pod(config))
            endpoints.append(
                {"name": f"pod-{index}", "host": "127.0.0.1", "port": config.port, "role": "both"}
            )
        url = stack.enter_context(gateway(endpoints))
        assert wait_until(lambda: ready(url))
        yield url


def test_aggregated_completion_through_the_gateway(aggregated: str) -> None:
    client = OpenAI(base_url=f"{aggregated}/v1", api_key="unused", max_retries=0)
    completion = client.completions.create(model=MODEL, prompt=words(40), max_tokens=5)

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"


def test_aggregated_stream_is_relayed_chunk_by_chunk(aggregated: str) -> None:
    client = OpenAI(base_url=f"{aggregated}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": words(10, 5)}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 4
    assert chunks[-1].usage is not None


def test_request_id_is_honoured_and_returned(aggregated: str) -> None:
    reply = httpx.post(
        f"{aggregated}/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 1},
        headers={"x-request-id": "rid-123"},
        timeout=10,
    )

    assert reply.status_code == 200
    assert reply.headers["x-request-id"] == "rid-123"
    assert reply.json()["id"] == "cmpl-rid-123"


def test_a_shared_prefix_goes_where_it_is_cached(aggregated: str) -> None:
    shared = words(2000, offset=11)
    cached = []
    for question in range(4):
        reply = httpx.post(
            f"{aggregated}/v1/completions",
            json={"model": MODEL, "prompt": shared + words(20, 500 + question), "max_tokens": 1},
            timeout=30,
        )
        cached.append(reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert cached[0] == 0
    assert all(hit >= 1984 for hit in cached[1:]), cached  # 124 blocks of the prefix


def test_models_come_from_the_pods(aggregated: str) -> None:
    reply = httpx.get(f"{aggregated}/v1/models", timeout=10)

    assert reply.status_code == 200
    assert [m["id"] for m in reply.json()["data"]] == [MODEL]


def test_gateway_metrics_count_requests_and_decisions(aggregated: str) -> None:
    httpx.post(
        f"{aggregated}/v1/completions",
        json={"model": MODEL, "prompt": "count me", "max_tokens": 1},
        timeout=10,
    )
    text = httpx.get(f"{aggregated}/metrics", timeout=10).text

    assert 'tandem_requests_total{route="completions",status="200"}' in text
    assert 'tandem_pd_decisions_total{decision="local",reason="aggregated_endpoint"}' in text
    assert "tandem_scheduling_duration_seconds_count" in text


@contextmanager
def pd_cluster(decode: Recorder) -> Iterator[tuple[str, str]]:
    """A simulated prefill pod and a recording fake decode endpoint behind a gateway."""
    prefill_config = pod_config(role="prefill", kv_role="kv_producer", time_scale=0.05)
    decode_port = free_port()
    with (
        running_pod(prefill_config),
        serve(recording_server(decode), decode_port),
        gateway(
            [
                {"name": "prefill-0", "host": "127.0.0.1", "port": prefill_config.port,
                 "role": "prefill"},
                {"name": "decode-0", "host": "127.0.0.1", "port": decode_port, "role": "decode"},
            ],
            scheduler=disaggregating_tandem(),
        ) as url,
    ):  # fmt: skip
        assert wait_until(lambda: _healthy(url) == 2)
        yield url, f"127.0.0.1:{prefill_config.port}"


def _healthy(url: str) -> int:
    healthy: int = httpx.get(f"{url}/ready", timeout=5).json()["healthy"]
    return healthy


def test_long_uncached_prompt_is_disaggregated() -> None:
    decode = Recorder()
    with pd_cluster(decode) as (url, prefill_address):
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": words(3000, 17), "max_tokens": 4},
            headers={"x-prefiller-host-port": "127.0.0.99:1"},
            timeout=10,
        )

    assert reply.status_code == 200
    assert decode.headers[-1]["x-prefiller-host-port"] == prefill_address
    assert decode.headers[-1]["x-request-id"] == reply.headers["x-request-id"]


def test_short_prompt_is_decoded_in_place_and_a_client_header_is_stripped() -> None:
    decode = Recorder()
    with pd_cluster(decode) as (url, _):
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": "short prompt", "max_tokens": 4},
            headers={"x-prefiller-host-port": "127.0.0.99:1"},
            timeout=10,
        )
        text = httpx.get(f"{url}/metrics", timeout=5).text

    assert reply.status_code == 200
    assert "x-prefiller-host-port" not in decode.headers[-1]
    assert 'tandem_pd_decisions_total{decision="local",reason="uncached_below_threshold"}' in text


def test_no_healthy_endpoint_is_a_503_that_says_so() -> None:
    dead = {"name": "decode-0", "host": "127.0.0.1", "port": free_port(), "role": "decode"}
    with gateway([dead]) as url:
        reply = httpx.post(
            f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=10
        )

    assert reply.status_code == 503
    error = reply.json()["error"]
    assert error["type"] == "ServiceUnavailableError"
    assert "decode pool" in error["message"]
    assert "0 of 1 endpoints are healthy" in error["message"]


def test_saturated_endpoints_with_no_queue_get_a_429_with_retry_after() -> None:
    slow = Recorder(delay_s=2.0)
    port = free_port()
    with (
        serve(recording_server(slow), port),
        _saturating_gateway(port) as url,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        assert wait_until(lambda: ready(url))
        first = pool.submit(
            httpx.post, f"{url}/v1/completions", json={"model": MODEL, "prompt": "a"}, timeout=10
        )
        assert wait_until(lambda: len(slow.headers) == 1)
        reply = httpx.post(
            f"{url}/v1/completions", json={"model": MODEL, "prompt": "b"}, timeout=10
        )
        assert first.result().status_code == 200

    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["x-tandem-reject-reason"] == "queue_full"
    assert reply.json()["error"]["type"] == "RateLimitError"


@contextmanager
def _saturating_gateway(decode_port: int) -> Iterator[str]:
    port = free_port()
    config = parse_orchestrator_config(
        {
            "endpoints": [
                {"name": "decode-0", "host": "127.0.0.1", "port": decode_port, "role": "both"}
            ],
            "gateway": {"port": port, "max_in_flight_per_endpoint": 1},
            "scrape": {"interval_s": 0.1},
            "admission": {"max_queue_per_pool": 0},
        }
    )
    with serve(create_app(config), port) as url:
        yield url


def test_upstream_error_status_is_relayed() -> None:
    failing = Recorder(status=503)
    port = free_port()
    with (
        serve(recording_server(failing), port),
        gateway([{"name": "d", "host": "127.0.0.1", "port": port, "role": "both"}]) as url,
    ):
        assert wait_until(lambda: ready(url))
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=10)

    assert reply.status_code == 503


def test_a_body_that_is_not_json_is_a_400() -> None:
    with gateway([]) as url:
        reply = httpx.post(
            f"{url}/v1/completions",
            content=b"{nope",
            headers={"content-type": "application/json"},
            timeout=10,
        )

    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "BadRequestError"
    assert "not valid JSON" in reply.json()["error"]["message"]


class RefusingTransport(httpx.AsyncBaseTransport):
    """Real HTTP, except that inference requests to one port are refused."""

    def __init__(self, refused_port: int) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._refused_port = refused_port

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.port == self._refused_port:
            raise httpx.ConnectError("connection refused", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_a_refused_connection_is_retried_on_another_endpoint() -> None:
    first, second = Recorder(), Recorder()
    first_port, second_port = free_port(), free_port()
    endpoints = [
        {"name": "a", "host": "127.0.0.1", "port": first_port, "role": "both"},
        {"name": "b", "host": "127.0.0.1", "port": second_port, "role": "both"},
    ]
    with (
        serve(recording_server(first), first_port),
        serve(recording_server(second), second_port),
        gateway(endpoints, transport=RefusingTransport(first_port)) as url,
    ):
        assert wait_until(lambda: _healthy(url) == 2)
        statuses = [
            httpx.post(
                f"{url}/v1/completions", json={"prompt": f"request {i}"}, timeout=10
            ).status_code
            for i in range(6)
        ]
        text = httpx.get(f"{url}/metrics", timeout=5).text

    assert statuses == [200] * 6
    assert len(second.headers) == 6
    assert 'tandem_upstream_errors_total{kind="connect"}' in text


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_the_upstream_request(stream: bool) -> None:
    pod = pod_config(time_scale=2.0)
    with (
        running_pod(pod),
        gateway([{"name": "pod", "host": "127.0.0.1", "port": pod.port, "role": "both"}]) as url,
    ):
        assert wait_until(lambda: ready(url))
        body = {"prompt": "go on", "max_tokens": 2000, "ignore_eos": True, "stream": stream}
        with httpx.Client(timeout=httpx.Timeout(10, read=0.5)) as client:
            try:
                with client.stream("POST", f"{url}/v1/completions", json=body) as reply:
                    lines = reply.iter_lines()
                    next(lines)  # the stream has started: the pod is generating
                    assert scrape(pod_url(pod))["vllm:num_requests_running{}"] == 1
            except httpx.ReadTimeout:
                pass  # the non-streaming request: the client gave up waiting
        aborted = "vllm:request_success_total{finished_reason=abort}"
        assert wait_until(lambda: scrape(pod_url(pod))[aborted] == 1)
        assert scrape(pod_url(pod))["vllm:num_requests_running{}"] == 0
        assert scrape(pod_url(pod))["vllm:kv_cache_usage_perc{}"] == 0


def pod_url(config: Any) -> str:
    return f"http://127.0.0.1:{config.port}"
