"""Building blocks for P/D tests: simulated prefill and decode pods, the routing sidecar in
front of the decode pod, and fakes that stand in for a prefill pod or a local vLLM."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import generate_latest

from tandem.kvcache.tokenizer import SYNTHETIC_WORDS
from tandem.sidecar.app import create_app
from tandem.sidecar.config import SidecarConfig
from tandem.sidecar.service import Sidecar
from tandem.simulator.config import SimPodConfig
from tests.support.fakes import Recorder, fake_model_server
from tests.support.servers import free_port, parse_samples, pod_config, running_pod, serve

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PREFILLER = "x-prefiller-host-port"
BY_SOURCE = "vllm:prompt_tokens_by_source_total"


def words(count: int, offset: int = 0) -> str:
    """`count` synthetic tokens; prompts whose offsets differ share no prefix block."""
    return " " + " ".join(SYNTHETIC_WORDS[(offset + 7 * i) % 1000] for i in range(count))


def prefill_config(**overrides: Any) -> SimPodConfig:
    return pod_config(
        **({"role": "prefill", "kv_role": "kv_producer", "time_scale": 0.05} | overrides)
    )


def decode_config(**overrides: Any) -> SimPodConfig:
    return pod_config(
        **({"role": "decode", "kv_role": "kv_consumer", "time_scale": 0.05} | overrides)
    )


def address(port: int) -> str:
    return f"127.0.0.1:{port}"


@dataclass(frozen=True, slots=True)
class RunningSidecar:
    url: str
    app: FastAPI

    def own_samples(self) -> dict[str, float]:
        """The sidecar's own counters read in-process, as `samples` keys them: readable even
        when its /metrics cannot be (that route needs the local vLLM)."""
        state: Sidecar = self.app.state.sidecar
        return parse_samples(generate_latest(state.metrics.registry).decode())


@contextmanager
def running_sidecar(
    vllm_port: int, prefill_ports: tuple[int, ...] = (), **settings: Any
) -> Iterator[RunningSidecar]:
    """The routing sidecar on a free port in front of the vLLM on `vllm_port`, allowing the
    prefill endpoints on `prefill_ports`."""
    port = free_port()
    config = SidecarConfig(
        port=port,
        vllm_port=vllm_port,
        prefill_endpoints=tuple(address(p) for p in prefill_ports),
        **settings,
    )
    app = create_app(config)
    with serve(app, port, tls=config.tls) as url:
        yield RunningSidecar(url, app)


@contextmanager
def sidecar(vllm_port: int, prefill_ports: tuple[int, ...] = (), **settings: Any) -> Iterator[str]:
    """`running_sidecar`, yielding only its base URL."""
    with running_sidecar(vllm_port, prefill_ports, **settings) as running:
        yield running.url


@dataclass(frozen=True, slots=True)
class PDStack:
    """A simulated prefill pod, a simulated decode pod and the sidecar in front of it."""

    prefill: SimPodConfig
    decode: SimPodConfig
    sidecar_url: str

    @property
    def prefill_url(self) -> str:
        return f"http://{address(self.prefill.port)}"

    @property
    def decode_url(self) -> str:
        return f"http://{address(self.decode.port)}"

    @property
    def prefill_address(self) -> str:
        return address(self.prefill.port)


@contextmanager
def pd_stack(
    prefill: SimPodConfig | None = None,
    decode: SimPodConfig | None = None,
    also_allowed: tuple[int, ...] = (),
    **settings: Any,
) -> Iterator[PDStack]:
    """Prefill pod + decode pod + sidecar, all on loopback; the sidecar allows that prefill
    pod and the ports in `also_allowed`."""
    prefill = prefill or prefill_config()
    decode = decode or decode_config()
    with ExitStack() as stack:
        stack.enter_context(running_pod(prefill))
        stack.enter_context(running_pod(decode))
        allowed = (prefill.port, *also_allowed)
        url = stack.enter_context(sidecar(decode.port, allowed, **settings))
        yield PDStack(prefill, decode, url)


def complete(
    url: str,
    body: dict[str, Any],
    prefiller: str | None = None,
    route: str = "/v1/completions",
    request_id: str | None = None,
    timeout: float = 30,
) -> httpx.Response:
    """POST an inference request, with the prefill header when `prefiller` is given."""
    headers = {}
    if prefiller is not None:
        headers[PREFILLER] = prefiller
    if request_id is not None:
        headers["x-request-id"] = request_id
    return httpx.post(f"{url}{route}", json=body, headers=headers, timeout=timeout, verify=False)


def samples(url: str) -> dict[str, float]:
    """`/metrics` keyed as `tests.support.servers.scrape` keys it.

    Every request in these helpers is plain HTTP on loopback, so they pass `verify=False`:
    it spares loading the CA bundle, about 40 ms per call, which adds up over many scrapes.
    """
    text = httpx.get(f"{url}/metrics", timeout=10, verify=False).text
    return parse_samples(text)


def server_load(url: str) -> int:
    """In-flight inference requests on a simulated pod (its /load)."""
    load: int = httpx.get(f"{url}/load", timeout=5, verify=False).json()["server_load"]
    return load


def sse_events(text: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, without [DONE]."""
    return [
        json.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def counter(samples: dict[str, float], key: str) -> float:
    """A labelled counter's value; a child never incremented is absent and counts 0."""
    return samples.get(key, 0.0)


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    """How much a counter grew between two scrapes."""
    return counter(after, key) - counter(before, key)


def producer_params(side_channel_port: int, *, cached_tokens: int = 0) -> dict[str, Any]:
    """`kv_transfer_params` as a producer returns them, pointing at a side channel that
    holds nothing for the request, so a consumer's KV load fails."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [[1, 2, 3]],
        "remote_engine_id": "no-such-engine",
        "remote_request_id": "cmpl-nothing-held-0",
        "remote_host": "127.0.0.1",
        "remote_port": side_channel_port,
        "tp_size": 1,
        "remote_num_tokens": 40,
        "transfer_mode": "pull",
        "remote_prefill_cached_tokens": cached_tokens,
    }


def fake_prefill(recorder: Recorder, params: dict[str, Any]) -> FastAPI:
    """A prefill pod that records what reaches it and answers with these transfer params
    (and serves the metrics a scraper needs)."""
    app = fake_model_server()

    @app.post("/v1/completions")
    @app.post("/v1/chat/completions")
    async def prefill(request: Request) -> JSONResponse:
        await recorder.record(request)
        if recorder.delay_s:
            await asyncio.sleep(recorder.delay_s)
        body = {
            "id": "cmpl-prefill",
            "object": "text_completion",
            "choices": [{"index": 0, "text": " x", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41},
            "kv_transfer_params": params,
        }
        return JSONResponse(body, status_code=recorder.status)

    return app


@dataclass(frozen=True, slots=True)
class FakePD:
    """A recording fake prefill pod and a recording fake local vLLM, on loopback."""

    prefill: Recorder
    vllm: Recorder
    prefill_port: int
    vllm_port: int
    params: dict[str, Any]

    def clear(self) -> None:
        for recorder in (self.prefill, self.vllm):
            recorder.headers.clear()
            recorder.bodies.clear()


@contextmanager
def fake_pd(params: dict[str, Any], vllm_cached_tokens: int = 0) -> Iterator[FakePD]:
    """Serve `fake_prefill` (answering with `params`) and `fake_vllm` on free ports."""
    fakes = FakePD(Recorder(), Recorder(), free_port(), free_port(), params)
    with (
        serve(fake_prefill(fakes.prefill, params), fakes.prefill_port),
        serve(fake_vllm(fakes.vllm, vllm_cached_tokens), fakes.vllm_port),
    ):
        yield fakes


def fake_vllm(recorder: Recorder, cached_tokens: int) -> FastAPI:
    """A local vLLM that records requests and reports `cached_tokens` in its usage, as a
    JSON body or (for stream=true) an SSE stream ending in a usage chunk."""
    app = fake_model_server()
    usage = {
        "prompt_tokens": 40,
        "completion_tokens": 2,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }

    @app.post("/v1/completions")
    @app.post("/v1/chat/completions")
    async def completion(request: Request) -> Response:
        body = await recorder.record(request)
        head = {"id": "cmpl-fake", "object": "text_completion", "model": MODEL}
        if not body.get("stream"):
            choice = {"index": 0, "text": " a b", "finish_reason": "length"}
            return JSONResponse({**head, "choices": [choice], "usage": usage})

        async def events() -> AsyncIterator[bytes]:
            for text in (" a", " b"):
                chunk = {**head, "choices": [{"index": 0, "text": text}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextmanager
def open_request(
    url: str, route: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Iterator[socket.socket]:
    """Send a request over a raw socket and hold the connection open; leaving the block
    closes it, which is how a client that goes away looks to the server."""
    host_port = url.removeprefix("http://")
    host, _, port = host_port.partition(":")
    payload = json.dumps(body).encode()
    lines = [
        f"POST {route} HTTP/1.1",
        f"host: {host_port}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
        *(f"{key}: {value}" for key, value in (headers or {}).items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + payload)
        yield connection


@contextmanager
def closing_server(port: int) -> Iterator[None]:
    """A TCP server on 127.0.0.1:`port` that reads a request and closes without answering."""
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    async def start() -> asyncio.Server:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(start())
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"closing server on port {port} did not start")
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
