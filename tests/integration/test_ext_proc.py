"""The ext_proc endpoint picker on loopback, driven by a gRPC client that plays Envoy."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from tandem.discovery.endpoints import Endpoint
from tandem.errors import REJECT_REASON_HEADER
from tandem.http.protocol import PREFILLER_HEADER, REQUEST_ID_HEADER
from tandem.kvcache.tokenizer import SYNTHETIC_WORDS
from tandem.orchestrator.config import CONFIG_DIR, OrchestratorConfig, parse_orchestrator_config
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.ext_proc import (
    BODY_CHUNK_BYTES,
    DESTINATION_HEADER,
    DESTINATION_METADATA_NAMESPACE,
    ExtProcPicker,
    add_ext_proc_servicer,
)
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.config import build_scheduler
from tandem.orchestrator.scheduling.plugins.session_affinity_scorer import (
    SESSION_TOKEN_HEADER,
    encode_session_token,
)
from tandem.orchestrator.scheduling.types import EngineMetrics
from tests.support.endpoints import pool
from tests.support.schedulers import disaggregating_tandem

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NOW = 100.0
TANDEM = yaml.safe_load((CONFIG_DIR / "tandem.yaml").read_text())


PREFILL = pool("prefill", 2, 1)
DECODE = pool("decode", 2, 2)
PD_CLUSTER = PREFILL + DECODE


def words(count: int, offset: int = 0) -> str:
    return " " + " ".join(SYNTHETIC_WORDS[(offset + 7 * i) % 1000] for i in range(count))


def completion(prompt: str) -> bytes:
    return json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 4}).encode()


LONG = completion(words(3000))  # far above the decider's 256 uncached tokens: P/D
SHORT = completion("How far is the moon?")  # below it: decoded where it is prefilled


def pd_orchestrator() -> OrchestratorConfig:
    """The default configuration, with the long prompts of these tests sent to the prefill
    pool (tandem would prefill them on the idle decode pods)."""
    return parse_orchestrator_config({"scheduler": disaggregating_tandem()})


def make_router(config: OrchestratorConfig, endpoints: Sequence[Endpoint]) -> Router:
    """A router as the orchestrator's app builds it, fed endpoints and a fresh scrape each."""
    scheduler = build_scheduler(
        config.scheduler_config(), rng=random.Random(7), prefix_seed=config.model or ""
    )
    router = Router(
        config=config,
        scheduler=scheduler,
        store=EndpointStore(config.scrape.staleness_s, config.scrape.failures_before_unhealthy),
        metrics=GatewayMetrics(),
        clock=lambda: NOW,
    )
    router.on_endpoints(endpoints)
    for endpoint in endpoints:
        metrics = EngineMetrics(0, 0, 0.1, NOW, block_size=16, num_gpu_blocks=10_000)
        router.store.record_scrape(endpoint.name, metrics)
        router.on_scrape(endpoint, metrics, None)
    return router


def in_flight(router: Router) -> dict[str, tuple[int, int]]:
    """(requests, prompt tokens) in flight per endpoint."""
    counts = {}
    for endpoint in router.store.endpoints():
        state = router.store.state(endpoint.name)
        assert state is not None
        counts[endpoint.name] = (state.in_flight, state.in_flight_tokens)
    return counts


def idle(router: Router) -> bool:
    return all(count == (0, 0) for count in in_flight(router).values())


def streams(router: Router, outcome: str) -> float:
    value = router.metrics.registry.get_sample_value(
        "tandem_ext_proc_streams_total", {"outcome": outcome}
    )
    return value or 0.0


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@asynccontextmanager
async def picker(
    router: Router, max_body_bytes: int | None = None
) -> AsyncIterator[ext_proc_grpc.ExternalProcessorStub]:
    """The picker on a free loopback port, and a stub to open streams with."""
    server = grpc.aio.server()
    if max_body_bytes is None:
        add_ext_proc_servicer(server, router, router.config)
    else:
        servicer = ExtProcPicker(router, router.config, max_body_bytes=max_body_bytes)
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield ext_proc_grpc.ExternalProcessorStub(channel)
    finally:
        await server.stop(None)


def header_map(headers: dict[str, str]) -> Any:
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )


class EnvoyStream:
    """One ext_proc stream, driven the way Envoy drives it for one HTTP request."""

    def __init__(self, stub: ext_proc_grpc.ExternalProcessorStub) -> None:
        self.call = stub.Process()

    async def send(self, **message: Any) -> None:
        await self.call.write(ext_proc_pb2.ProcessingRequest(**message))

    async def send_request(
        self,
        body: bytes | None,
        *,
        path: str = "/v1/completions",
        headers: dict[str, str] | None = None,
        chunk_bytes: int = 16_384,
        trailers: bool = False,
    ) -> None:
        """Headers, then the body in chunks (end_of_stream on the last, or trailers)."""
        method = "GET" if body is None else "POST"
        fields = {":method": method, ":path": path, ":authority": "inference.example"}
        await self.send(
            request_headers=ext_proc_pb2.HttpHeaders(
                headers=header_map({**fields, **(headers or {})}), end_of_stream=body is None
            )
        )
        if body is None:
            return
        chunks = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            end = last and not trailers
            await self.send(request_body=ext_proc_pb2.HttpBody(body=chunk, end_of_stream=end))
        if trailers:
            await self.send(request_trailers=ext_proc_pb2.HttpTrailers(trailers=header_map({})))

    async def send_response(self, chunks: Sequence[bytes]) -> None:
        """The pod's answer: response headers, then the body chunks, the last one ending it."""
        await self.send(
            response_headers=ext_proc_pb2.HttpHeaders(
                headers=header_map({":status": "200", "content-type": "text/event-stream"})
            )
        )
        for index, chunk in enumerate(chunks):
            end = index == len(chunks) - 1
            await self.send(response_body=ext_proc_pb2.HttpBody(body=chunk, end_of_stream=end))

    async def read(self) -> Any:
        reply = await asyncio.wait_for(self.call.read(), timeout=10)
        assert reply is not grpc.aio.EOF, "the picker ended the stream"
        return reply

    async def read_body(self, direction: str = "request_body") -> list[Any]:
        """Streamed body replies up to the one with end_of_stream."""
        replies = []
        while True:
            reply = await self.read()
            assert reply.WhichOneof("response") == direction
            streamed = getattr(reply, direction).response.body_mutation.streamed_response
            replies.append(streamed)
            if streamed.end_of_stream:
                return replies

    async def close(self) -> None:
        """Envoy half-closes when the exchange is over; the picker ends the stream."""
        await self.call.done_writing()
        assert await asyncio.wait_for(self.call.read(), timeout=10) is grpc.aio.EOF
        assert await self.call.code() == grpc.StatusCode.OK


def set_headers(mutation: Any) -> dict[str, str]:
    return {option.header.key: option.header.raw_value.decode() for option in mutation.set_headers}


def destinations(reply: Any) -> str:
    """The `envoy.lb` metadata entry naming the picked endpoints."""
    namespace = reply.dynamic_metadata.fields[DESTINATION_METADATA_NAMESPACE]
    return str(namespace.struct_value.fields[DESTINATION_HEADER].string_value)


def immediate_error(reply: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    assert reply.WhichOneof("response") == "immediate_response"
    immediate = reply.immediate_response
    return immediate.status.code, set_headers(immediate.headers), json.loads(immediate.body)


# -- picking ------------------------------------------------------------------------------


async def test_disaggregated_pick_names_decode_prefiller_and_request_id() -> None:
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        client = {PREFILLER_HEADER: "127.0.0.99:8000", REQUEST_ID_HEADER: "rid-pd"}
        await envoy.send_request(LONG, headers=client, chunk_bytes=4096)
        reply = await envoy.read()

        assert reply.WhichOneof("response") == "request_headers"
        common = reply.request_headers.response
        headers = set_headers(common.header_mutation)
        assert headers[DESTINATION_HEADER] in {e.address for e in DECODE}
        prefillers = headers[PREFILLER_HEADER].split(",")
        assert set(prefillers) <= {e.address for e in PREFILL}, "the client's value survived"
        assert headers[REQUEST_ID_HEADER] == "rid-pd"
        assert PREFILLER_HEADER not in common.header_mutation.remove_headers
        assert common.clear_route_cache
        assert destinations(reply).split(",")[0] == headers[DESTINATION_HEADER]
        body = await envoy.read_body()
        assert b"".join(chunk.body for chunk in body) == LONG
        prefill = next(e.name for e in PREFILL if e.address == prefillers[0])
        assert in_flight(router)[prefill][0] == 1
        envoy.call.cancel()


async def test_a_large_body_comes_back_intact_in_chunks_of_at_most_62000_bytes() -> None:
    large = completion(words(30_000, offset=3))
    assert len(large) > 2 * BODY_CHUNK_BYTES
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(large)
        assert (await envoy.read()).WhichOneof("response") == "request_headers"
        chunks = await envoy.read_body()

        assert b"".join(chunk.body for chunk in chunks) == large
        assert len(chunks) == -(-len(large) // BODY_CHUNK_BYTES)
        assert all(len(chunk.body) <= BODY_CHUNK_BYTES for chunk in chunks)
        assert [chunk.end_of_stream for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
        envoy.call.cancel()


async def test_local_decision_removes_a_client_prefiller_header_and_makes_a_request_id() -> None:
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(SHORT, headers={PREFILLER_HEADER: "127.0.0.99:8000"})
        reply = await envoy.read()

        mutation = reply.request_headers.response.header_mutation
        assert list(mutation.remove_headers) == [PREFILLER_HEADER]
        headers = set_headers(mutation)
        assert PREFILLER_HEADER not in headers
        assert headers[DESTINATION_HEADER] in {e.address for e in DECODE}
        assert len(headers[REQUEST_ID_HEADER]) == 32  # a fresh uuid4 hex
        decisions = {"decision": "local", "reason": "uncached_below_threshold"}
        assert router.metrics.registry.get_sample_value("tandem_pd_decisions_total", decisions)
        envoy.call.cancel()


async def test_fields_only_tandem_may_set_never_reach_the_pod() -> None:
    """A pod that serves the request whole (a prefill pod among them) would act on a client's
    `kv_transfer_params`: the body goes on without them, its length set to match."""
    body = json.loads(SHORT)
    sent = json.dumps({**body, "kv_transfer_params": {"do_remote_decode": True}}).encode()
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(sent)
        reply = await envoy.read()
        forwarded = b"".join(chunk.body for chunk in await envoy.read_body())

        assert json.loads(forwarded) == body
        headers = set_headers(reply.request_headers.response.header_mutation)
        assert headers["content-length"] == str(len(forwarded))
        dropped = {"field": "kv_transfer_params"}
        assert (
            router.metrics.registry.get_sample_value("tandem_client_fields_dropped_total", dropped)
            == 1
        )
        envoy.call.cancel()


async def test_metadata_lists_the_ranked_decode_fallbacks_after_the_primary() -> None:
    scheduler = copy.deepcopy(TANDEM)
    for plugin in scheduler["plugins"]:
        if plugin.get("name") == "decode-picker":
            plugin["parameters"] = {"maxNumOfEndpoints": 3}
    aggregated = pool("both", 4, 3)
    router = make_router(parse_orchestrator_config({"scheduler": scheduler}), aggregated)
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(SHORT)
        reply = await envoy.read()

        primary = set_headers(reply.request_headers.response.header_mutation)[DESTINATION_HEADER]
        ranked = destinations(reply).split(",")
        assert len(ranked) == 3 == len(set(ranked))
        assert ranked[0] == primary
        assert "," not in primary
        assert set(ranked) <= {e.address for e in aggregated}
        envoy.call.cancel()


async def test_a_headers_only_request_is_routed_at_once() -> None:
    router = make_router(pd_orchestrator(), pool("both", 2, 3))
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(None, path="/v1/models")
        reply = await envoy.read()

        headers = set_headers(reply.request_headers.response.header_mutation)
        assert headers[DESTINATION_HEADER] in {"127.0.3.1:8000", "127.0.3.2:8000"}
        await envoy.send_response([b'{"data": []}'])
        assert (await envoy.read()).WhichOneof("response") == "response_headers"
        await envoy.read_body("response_body")
        await envoy.close()
    assert idle(router)


async def test_a_request_ended_by_trailers_gets_its_body_then_trailers_back() -> None:
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(SHORT, trailers=True)
        assert (await envoy.read()).WhichOneof("response") == "request_headers"
        body = await envoy.read()
        streamed = body.request_body.response.body_mutation.streamed_response
        assert (streamed.body, streamed.end_of_stream) == (SHORT, False)
        assert (await envoy.read()).WhichOneof("response") == "request_trailers"
        envoy.call.cancel()


# -- the response and the load ------------------------------------------------------------


async def test_response_is_echoed_and_the_load_is_released_when_it_ends() -> None:
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(LONG, headers={REQUEST_ID_HEADER: "rid-done"})
        await envoy.read()
        await envoy.read_body()
        assert sum(requests for requests, _ in in_flight(router).values()) == 2  # P and D

        events = [b'data: {"choices": []}\n\n', b"data: [DONE]\n\n"]
        await envoy.send_response(events)
        reply = await envoy.read()
        assert set_headers(reply.response_headers.response.header_mutation) == {
            REQUEST_ID_HEADER: "rid-done"
        }
        echoed = await envoy.read_body("response_body")
        assert [chunk.body for chunk in echoed] == events
        assert idle(router), in_flight(router)  # at the response's end, before the stream's
        await envoy.close()

    assert streams(router, "completed") == 1


async def test_each_request_is_released_exactly_once() -> None:
    router = make_router(pd_orchestrator(), pool("both", 1, 3))
    async with picker(router) as stub:
        first, second = EnvoyStream(stub), EnvoyStream(stub)
        for envoy in (first, second):
            await envoy.send_request(SHORT)
            await envoy.read()
            await envoy.read_body()
        await first.send_response([b"{}"])
        await first.read()
        await first.read_body("response_body")
        await first.close()

        assert in_flight(router)["both-0"][0] == 1  # the second request still counts
        second.call.cancel()
        assert await eventually(lambda: idle(router))


async def test_load_is_released_when_envoy_cancels_mid_response() -> None:
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(LONG)
        await envoy.read()
        await envoy.read_body()
        await envoy.send(
            response_headers=ext_proc_pb2.HttpHeaders(headers=header_map({":status": "200"}))
        )
        await envoy.read()
        await envoy.send(response_body=ext_proc_pb2.HttpBody(body=b"data: {}\n\n"))
        await envoy.read()
        assert not idle(router)

        envoy.call.cancel()

        assert await eventually(lambda: idle(router)), in_flight(router)
        assert await eventually(lambda: streams(router, "abandoned") == 1)


async def test_session_token_on_the_response_brings_the_session_back() -> None:
    scheduler = copy.deepcopy(TANDEM)
    scheduler["plugins"].append({"type": "session-affinity-scorer"})
    for profile in scheduler["schedulingProfiles"]:
        if profile["name"] == "decode":
            profile["plugins"].insert(1, {"pluginRef": "session-affinity-scorer", "weight": 100})
    aggregated = pool("both", 4, 3)
    router = make_router(parse_orchestrator_config({"scheduler": scheduler}), aggregated)
    async with picker(router) as stub:
        first = EnvoyStream(stub)
        await first.send_request(SHORT)
        destination = set_headers((await first.read()).request_headers.response.header_mutation)
        await first.read_body()
        await first.send_response([b"{}"])
        token = set_headers((await first.read()).response_headers.response.header_mutation)
        await first.read_body("response_body")
        await first.close()
        name = next(e.name for e in aggregated if e.address == destination[DESTINATION_HEADER])
        assert token[SESSION_TOKEN_HEADER] == encode_session_token(name)

        for _ in range(3):
            again = EnvoyStream(stub)
            await again.send_request(
                SHORT, headers={SESSION_TOKEN_HEADER: encode_session_token(name)}
            )
            reply = await again.read()
            headers = set_headers(reply.request_headers.response.header_mutation)
            assert headers[DESTINATION_HEADER] == destination[DESTINATION_HEADER]
            again.call.cancel()


# -- refusals -----------------------------------------------------------------------------


async def test_no_endpoints_is_an_immediate_503_with_a_reason() -> None:
    router = make_router(pd_orchestrator(), [])
    async with picker(router) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(SHORT, headers={REQUEST_ID_HEADER: "rid-none"})
        status, headers, body = immediate_error(await envoy.read())

        assert status == 503
        assert headers[REJECT_REASON_HEADER] == "no_endpoints"
        assert headers[REQUEST_ID_HEADER] == "rid-none"
        assert body["error"]["type"] == "ServiceUnavailableError"
        assert "0 of 0 endpoints are healthy" in body["error"]["message"]
        assert await asyncio.wait_for(envoy.call.read(), timeout=10) is grpc.aio.EOF
    assert streams(router, "no_endpoints") == 1


async def test_a_saturated_decode_pool_is_an_immediate_429_until_a_request_ends() -> None:
    config = parse_orchestrator_config({"gateway": {"max_in_flight_per_endpoint": 1}})
    router = make_router(config, pool("both", 1, 3))
    async with picker(router) as stub:
        holding = EnvoyStream(stub)
        await holding.send_request(SHORT)
        await holding.read()
        await holding.read_body()

        refused = EnvoyStream(stub)
        await refused.send_request(SHORT)
        status, headers, body = immediate_error(await refused.read())
        assert status == 429
        assert headers["retry-after"] == "1"
        assert headers[REJECT_REASON_HEADER] == "saturated"
        assert body["error"]["type"] == "RateLimitError"

        await holding.send_response([b"{}"])
        await holding.read()
        await holding.read_body("response_body")
        await holding.close()
        admitted = EnvoyStream(stub)
        await admitted.send_request(SHORT)
        assert (await admitted.read()).WhichOneof("response") == "request_headers"
        admitted.call.cancel()


async def test_malformed_json_is_an_immediate_400_and_the_next_stream_is_served() -> None:
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router) as stub:
        broken = EnvoyStream(stub)
        await broken.send_request(b'{"model": "m", "prompt": ', chunk_bytes=8)
        status, headers, body = immediate_error(await broken.read())
        assert status == 400
        assert headers[REJECT_REASON_HEADER] == "invalid_request"
        assert body["error"]["type"] == "BadRequestError"
        assert "not valid JSON" in body["error"]["message"]

        chat = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        envoy = EnvoyStream(stub)
        await envoy.send_request(chat.encode(), path="/v1/chat/completions")
        reply = await envoy.read()
        assert set_headers(reply.request_headers.response.header_mutation)[DESTINATION_HEADER]
        envoy.call.cancel()
    assert await eventually(lambda: idle(router))


async def test_a_body_growing_over_the_limit_is_refused_with_413() -> None:
    body = completion(words(300))
    limit = len(body) - 100
    router = make_router(pd_orchestrator(), PD_CLUSTER)
    async with picker(router, max_body_bytes=limit) as stub:
        envoy = EnvoyStream(stub)
        await envoy.send_request(body, chunk_bytes=len(body) // 2 + 1)  # the 2nd goes over
        status, headers, error = immediate_error(await envoy.read())

        assert status == 413
        assert headers[REJECT_REASON_HEADER] == "request_too_large"
        assert str(limit) in error["error"]["message"]
    assert idle(router)
