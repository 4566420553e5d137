"""The gRPC Pick API on loopback: routing decisions, endpoint state, errors and health, and the
same choices as the HTTP gateway."""

from __future__ import annotations

import random
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.discovery.endpoints import Endpoint
from tandem.kvcache.tokenizer import SYNTHETIC_WORDS
from tandem.orchestrator.app import create_app
from tandem.orchestrator.config import OrchestratorConfig, parse_orchestrator_config
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.grpc_server import start_grpc_server
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.config import build_scheduler
from tandem.orchestrator.scheduling.types import EngineMetrics
from tandem.v1 import pick_pb2, pick_pb2_grpc
from tests.support.endpoints import pool
from tests.support.fakes import Recorder, fake_model_server, recording_server
from tests.support.processes import REPO_ROOT, TANDEM
from tests.support.schedulers import disaggregating_tandem
from tests.support.servers import free_port, serve, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NOW = 100.0
PICKER = "tandem.v1.Picker"


def words(count: int, offset: int = 0) -> str:
    return " " + " ".join(SYNTHETIC_WORDS[(offset + 7 * i) % 1000] for i in range(count))


LONG = words(3000)  # far above the decider's 256 uncached tokens
SHORT = "How far is the moon?"


PREFILL = pool("prefill", 2, 1)
DECODE = pool("decode", 2, 2)
AGGREGATED = pool("both", 2, 3)


def make_router(
    endpoints: Sequence[Endpoint],
    *,
    scraped: Sequence[Endpoint] | None = None,
    kv_usage: Mapping[str, float] | None = None,
    max_in_flight: int = 1024,
) -> Router:
    """A router as the app builds it, with these endpoints; those in `scraped` (default: all)
    have had one successful scrape at NOW."""
    config = parse_orchestrator_config(
        {
            "gateway": {"max_in_flight_per_endpoint": max_in_flight},
            "grpc": {"port": 0},
            "scheduler": disaggregating_tandem(),
        }
    )
    router = Router(
        config=config,
        scheduler=build_scheduler(config.scheduler_config(), rng=random.Random(7)),
        store=EndpointStore(config.scrape.staleness_s, config.scrape.failures_before_unhealthy),
        metrics=GatewayMetrics(),
        clock=lambda: NOW,
    )
    router.on_endpoints(endpoints)
    for endpoint in endpoints if scraped is None else scraped:
        usage = (kv_usage or {}).get(endpoint.name, 0.1)
        router.store.record_scrape(endpoint.name, EngineMetrics(0, 0, usage, NOW))
    return router


@dataclass
class Clients:
    picker: Any
    health: Any


@asynccontextmanager
async def pick_api(router: Router) -> AsyncIterator[Clients]:
    """The orchestrator's gRPC server over `router` on a free loopback port, and its stubs."""
    server = await start_grpc_server(router, router.config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Clients(pick_pb2_grpc.PickerStub(channel), health_pb2_grpc.HealthStub(channel))
    finally:
        await server.stop()


def text(prompt: str, **fields: Any) -> Any:
    return pick_pb2.PickRequest(model=MODEL, text=prompt, **fields)


def names(endpoints: Any) -> list[str]:
    return [endpoint.name for endpoint in endpoints]


# -- Pick -----------------------------------------------------------------------------------


async def test_aggregated_pool_decodes_where_it_prefills() -> None:
    async with pick_api(make_router(AGGREGATED)) as api:
        reply = await api.picker.Pick(text(LONG, request_id="rid-1"))

    assert reply.request_id == "rid-1"
    assert reply.decode.name in names(AGGREGATED)
    assert reply.decode.address == f"127.0.3.{int(reply.decode.name[-1]) + 1}:8000"
    assert list(reply.prefill) == []
    assert reply.decision == pick_pb2.DECISION_LOCAL
    assert reply.reason == "aggregated_endpoint"


async def test_long_uncached_prompt_gets_ranked_prefill_endpoints() -> None:
    async with pick_api(make_router(PREFILL + DECODE)) as api:
        reply = await api.picker.Pick(text(LONG))

    assert reply.decision == pick_pb2.DECISION_DISAGGREGATE
    assert reply.reason == "uncached_above_threshold"
    assert reply.decode.name in names(DECODE)
    assert sorted(names(reply.prefill)) == names(PREFILL)  # both, best first
    assert reply.prefill[0].score >= reply.prefill[1].score
    assert {p.address for p in reply.prefill} == {"127.0.1.1:8000", "127.0.1.2:8000"}


async def test_short_prompt_is_decoded_in_place() -> None:
    async with pick_api(make_router(PREFILL + DECODE)) as api:
        reply = await api.picker.Pick(text(SHORT))

    assert reply.decision == pick_pb2.DECISION_LOCAL
    assert reply.reason == "uncached_below_threshold"
    assert reply.decode.name in names(DECODE)
    assert list(reply.prefill) == []


@pytest.mark.parametrize(
    ("count", "decision"),
    [(300, pick_pb2.DECISION_DISAGGREGATE), (200, pick_pb2.DECISION_LOCAL)],
)
async def test_token_ids_count_exactly(count: int, decision: int) -> None:
    # 300 ids of "7" are 599 characters: as text they would estimate 150 tokens, below 256.
    request = pick_pb2.PickRequest(token_ids=pick_pb2.TokenIds(ids=[7] * count))
    async with pick_api(make_router(PREFILL + DECODE)) as api:
        reply = await api.picker.Pick(request)

    assert reply.decision == decision


async def test_chat_messages_are_scheduled_as_a_conversation() -> None:
    chat = pick_pb2.ChatMessages(
        messages=[
            pick_pb2.ChatMessage(role="system", content=LONG),
            pick_pb2.ChatMessage(role="user", content=SHORT),
        ]
    )
    async with pick_api(make_router(PREFILL + DECODE)) as api:
        reply = await api.picker.Pick(pick_pb2.PickRequest(model=MODEL, chat=chat))

    assert reply.decision == pick_pb2.DECISION_DISAGGREGATE
    assert reply.decode.name in names(DECODE)


async def test_request_id_is_the_callers_the_header_or_a_new_one() -> None:
    async with pick_api(make_router(AGGREGATED)) as api:
        given = await api.picker.Pick(text(SHORT, request_id="rid-7"))
        from_header = await api.picker.Pick(text(SHORT, headers={"X-Request-Id": "rid-8"}))
        first = await api.picker.Pick(text(SHORT))
        second = await api.picker.Pick(text(SHORT))

    assert given.request_id == "rid-7"
    assert from_header.request_id == "rid-8"
    assert len(first.request_id) == 32
    assert int(first.request_id, 16) >= 0  # a uuid4 in hex, as the gateway makes
    assert first.request_id != second.request_id


async def test_scores_come_per_profile_endpoint_and_scorer_when_asked() -> None:
    router = make_router(PREFILL + DECODE, kv_usage={"decode-0": 0.9, "decode-1": 0.2})
    async with pick_api(router) as api:
        plain = await api.picker.Pick(text(LONG))
        scored = await api.picker.Pick(text(words(3000, 5), include_scores=True))

    assert list(plain.scores) == []
    profiles = {
        p.profile: {e.endpoint: dict(e.scorers) for e in p.endpoints} for p in scored.scores
    }
    assert set(profiles) == {"prefill", "decode"}
    assert set(profiles["prefill"]) == set(names(PREFILL))
    assert set(profiles["decode"]) == set(names(DECODE))
    assert set(profiles["decode"]["decode-0"]) == {
        "prefix-cache-scorer",
        "kv-cache-utilization-scorer",
        "queue-scorer",
        "active-request-scorer",
    }
    kv = {name: s["kv-cache-utilization-scorer"] for name, s in profiles["decode"].items()}
    assert kv["decode-0"] == pytest.approx(0.1)
    assert kv["decode-1"] == pytest.approx(0.8)
    assert scored.decode.name == "decode-1"  # the emptier KV cache wins an uncached prompt


async def test_a_pick_is_not_counted_in_flight_but_teaches_the_prefix_index() -> None:
    async with pick_api(make_router(PREFILL + DECODE)) as api:
        first = await api.picker.Pick(text(LONG))
        again = await api.picker.Pick(text(LONG))
        listed = await api.picker.ListEndpoints(pick_pb2.ListEndpointsRequest())

    assert first.decision == pick_pb2.DECISION_DISAGGREGATE
    # The decode pod the first pick chose is predicted to hold the whole prompt now.
    assert again.decode.name == first.decode.name
    assert again.decision == pick_pb2.DECISION_LOCAL
    assert again.reason == "uncached_below_threshold"
    assert [(e.in_flight, e.in_flight_tokens) for e in listed.endpoints] == [(0, 0)] * 4


# -- errors ---------------------------------------------------------------------------------


async def test_no_healthy_endpoint_is_unavailable_and_says_so() -> None:
    router = make_router(PREFILL + DECODE, scraped=PREFILL)
    async with pick_api(router) as api:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.picker.Pick(text(SHORT))

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "decode pool" in (raised.value.details() or "")
    assert "2 of 4 endpoints are healthy" in (raised.value.details() or "")


async def test_saturated_decode_pool_is_resource_exhausted_with_retry_after() -> None:
    router = make_router(PREFILL + DECODE, max_in_flight=1)
    for endpoint in DECODE:
        router.store.acquire(endpoint.name)
    async with pick_api(router) as api:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.picker.Pick(text(SHORT))

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry later" in (raised.value.details() or "")
    assert ("retry-after", "1") in tuple(raised.value.trailing_metadata() or ())


async def test_a_pick_without_a_prompt_is_an_invalid_argument() -> None:
    async with pick_api(make_router(PREFILL + DECODE)) as api:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.picker.Pick(pick_pb2.PickRequest(model=MODEL))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "set text, token_ids or chat" in (raised.value.details() or "")


async def test_an_unknown_role_filter_is_an_invalid_argument() -> None:
    async with pick_api(make_router(PREFILL + DECODE)) as api:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.picker.ListEndpoints(pick_pb2.ListEndpointsRequest(role="decoder"))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown role 'decoder'" in (raised.value.details() or "")


# -- ListEndpoints and health ---------------------------------------------------------------


async def test_list_endpoints_reports_role_health_load_and_the_last_scrape() -> None:
    router = make_router(PREFILL + DECODE, scraped=[*PREFILL, DECODE[0]])
    router.store.record_scrape("decode-0", EngineMetrics(3, 5, 0.25, NOW - 1.5))
    router.store.acquire("decode-0", 40)
    router.store.record_scrape_failure("decode-1", "connect refused")
    async with pick_api(router) as api:
        everything = await api.picker.ListEndpoints(pick_pb2.ListEndpointsRequest())
        decode = await api.picker.ListEndpoints(pick_pb2.ListEndpointsRequest(role="decode"))

    assert names(everything.endpoints) == ["prefill-0", "prefill-1", "decode-0", "decode-1"]
    assert names(decode.endpoints) == ["decode-0", "decode-1"]
    scraped, unknown = decode.endpoints
    assert (scraped.address, scraped.role, scraped.healthy) == ("127.0.2.1:8000", "decode", True)
    assert (scraped.in_flight, scraped.in_flight_tokens) == (1, 40)
    assert scraped.HasField("engine")
    assert (scraped.engine.waiting, scraped.engine.running) == (3, 5)
    assert scraped.engine.kv_usage == pytest.approx(0.25)
    assert scraped.engine.age_seconds == pytest.approx(1.5)
    assert not unknown.healthy
    assert not unknown.HasField("engine")
    assert unknown.last_error == "connect refused"


async def test_health_serves_the_server_and_the_picker() -> None:
    async with pick_api(make_router(AGGREGATED)) as api:
        overall = await api.health.Check(health_pb2.HealthCheckRequest(service=""))
        picker = await api.health.Check(health_pb2.HealthCheckRequest(service=PICKER))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.health.Check(health_pb2.HealthCheckRequest(service="tandem.v1.Nothing"))

    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert picker.status == health_pb2.HealthCheckResponse.SERVING
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_taken_port_is_refused_naming_the_address() -> None:
    router = make_router(AGGREGATED)
    first = await start_grpc_server(router, router.config)
    taken = router.config.model_copy(
        update={"grpc": router.config.grpc.model_copy(update={"port": first.port})}
    )
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await start_grpc_server(router, taken)
    finally:
        await first.stop()


# -- the orchestrator app: one router behind both faces -------------------------------------


@dataclass
class FakePods:
    """Two prefill pods (metrics only) and two decode endpoints that record what they get."""

    endpoints: list[dict[str, Any]]
    decode: dict[str, Recorder]
    """Recorder per decode address (host:port)."""


@pytest.fixture(scope="module")
def fake_pods() -> Iterator[FakePods]:
    with ExitStack() as stack:
        endpoints: list[dict[str, Any]] = []
        decode: dict[str, Recorder] = {}
        for index in range(2):
            port = free_port()
            stack.enter_context(serve(fake_model_server(), port))
            endpoints.append(
                {"name": f"prefill-{index}", "host": "127.0.0.1", "port": port, "role": "prefill"}
            )
        for index in range(2):
            port, recorder = free_port(), Recorder()
            stack.enter_context(serve(recording_server(recorder), port))
            decode[f"127.0.0.1:{port}"] = recorder
            endpoints.append(
                {"name": f"decode-{index}", "host": "127.0.0.1", "port": port, "role": "decode"}
            )
        yield FakePods(endpoints, decode)


def app_config(pods: FakePods) -> OrchestratorConfig:
    return parse_orchestrator_config(
        {
            "endpoints": pods.endpoints,
            "gateway": {"port": free_port()},
            "grpc": {"enabled": True, "port": 0},
            # Stale metrics would score differently on two orchestrators scraping at
            # different moments; the fake pods' metrics never change.
            "scrape": {"interval_s": 0.1, "staleness_s": 60},
            "scheduler": disaggregating_tandem(),
            "seed": 7,
        }
    )


@dataclass
class Orchestrator:
    url: str
    picker: Any
    health: Any


@contextmanager
def orchestrator(config: OrchestratorConfig) -> Iterator[Orchestrator]:
    """The orchestrator app on loopback, its gRPC server started by its lifespan."""
    app = create_app(config)
    with serve(app, config.gateway.port) as url:
        port = app.state.grpc_server.port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            running = Orchestrator(
                url, pick_pb2_grpc.PickerStub(channel), health_pb2_grpc.HealthStub(channel)
            )
            assert wait_until(lambda: all_healthy(running))
            yield running


def all_healthy(running: Orchestrator) -> bool:
    listed = running.picker.ListEndpoints(pick_pb2.ListEndpointsRequest())
    return len(listed.endpoints) == 4 and all(e.healthy for e in listed.endpoints)


@dataclass(frozen=True)
class Routed:
    """Where a request went: the decode address and the prefill addresses, if any."""

    decode: str
    prefill: str | None


def through_gateway(pods: FakePods, url: str, request: Any) -> Routed:
    """Post the request's OpenAI equivalent and see which decode endpoint got it, and how."""
    seen = {address: len(recorder.headers) for address, recorder in pods.decode.items()}
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 4}
    route = "completions"
    if request.WhichOneof("prompt") == "text":
        body["prompt"] = request.text
    elif request.WhichOneof("prompt") == "token_ids":
        body["prompt"] = list(request.token_ids.ids)
    else:
        route = "chat/completions"
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.chat.messages]
    reply = httpx.post(f"{url}/v1/{route}", json=body, timeout=10)
    assert reply.status_code == 200
    (address,) = [a for a, r in pods.decode.items() if len(r.headers) > seen[a]]
    return Routed(address, pods.decode[address].headers[-1].get("x-prefiller-host-port"))


def through_pick(picker: Any, request: Any) -> Routed:
    reply = picker.Pick(request)
    prefill = ",".join(p.address for p in reply.prefill) or None
    assert (prefill is not None) == (reply.decision == pick_pb2.DECISION_DISAGGREGATE)
    return Routed(reply.decode.address, prefill)


SHARED = words(1500, 11)
REQUESTS = [
    text(SHARED + words(40, 1)),  # uncached: P/D
    text(SHARED + words(40, 2)),  # the prefix is cached where the first went: local
    text(words(1500, 400)),  # a new prefix: P/D, maybe on the other decode pod
    text(SHORT),  # short: local
    pick_pb2.PickRequest(model=MODEL, token_ids=pick_pb2.TokenIds(ids=[7] * 300)),
    pick_pb2.PickRequest(
        model=MODEL,
        chat=pick_pb2.ChatMessages(
            messages=[
                pick_pb2.ChatMessage(role="system", content=words(1200, 77)),
                pick_pb2.ChatMessage(role="user", content=SHORT),
            ]
        ),
    ),
    text(words(1500, 400) + words(30, 3)),
    text(SHARED + words(1500, 600)),  # cached prefix, long new tail: P/D again
]


def test_pick_chooses_what_the_gateway_chooses_for_the_same_requests_and_state(
    fake_pods: FakePods,
) -> None:
    with (
        orchestrator(app_config(fake_pods)) as gateway,
        orchestrator(app_config(fake_pods)) as picker,
    ):
        routed = [through_gateway(fake_pods, gateway.url, request) for request in REQUESTS]
        picked = [through_pick(picker.picker, request) for request in REQUESTS]

    assert picked == routed
    assert {r.prefill is None for r in routed} == {True, False}  # both decisions were made
    assert {r.decode for r in routed} == set(fake_pods.decode)  # and both decode pods used


FOLLOW_UPS = {
    "text": text(words(2000, 900)),
    "token_ids": pick_pb2.PickRequest(token_ids=pick_pb2.TokenIds(ids=[9] * 300)),
    "chat": pick_pb2.PickRequest(
        chat=pick_pb2.ChatMessages(
            messages=[
                pick_pb2.ChatMessage(role="system", content=words(2000, 901)),
                pick_pb2.ChatMessage(role="user", content=SHORT),
            ]
        )
    ),
}


@pytest.mark.parametrize("kind", FOLLOW_UPS)
def test_the_apps_pick_api_shares_the_gateways_router_and_reports_serving(
    fake_pods: FakePods, kind: str
) -> None:
    request = FOLLOW_UPS[kind]
    with orchestrator(app_config(fake_pods)) as running:
        routed = through_gateway(fake_pods, running.url, request)
        reply = running.picker.Pick(request)
        health = running.health.Check(health_pb2.HealthCheckRequest(service=PICKER))

    # The gateway's request taught the shared prefix index where the prompt now is, under
    # the very text the Pick API hashes.
    assert routed.prefill is not None
    assert reply.decode.address == routed.decode
    assert reply.decision == pick_pb2.DECISION_LOCAL
    assert reply.reason == "uncached_below_threshold"
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_tandem_orchestrator_serves_the_pick_api_on_its_grpc_port(
    fake_pods: FakePods, tmp_path: Path
) -> None:
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump({"endpoints": fake_pods.endpoints}))
    grpc_port = free_port()
    argv = [*TANDEM, "orchestrator", "--config", str(config), "--port", str(free_port())]
    log = tmp_path / "orchestrator.log"
    with log.open("wb") as sink, grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        process = subprocess.Popen(
            [*argv, "--grpc-port", str(grpc_port)],
            cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            picker = pick_pb2_grpc.PickerStub(channel)

            def ready() -> bool:
                try:
                    return all_healthy(Orchestrator("", picker, None))
                except grpc.RpcError:
                    return process.poll() is not None  # exited: the assertions report it

            assert wait_until(ready, timeout_s=30, interval_s=0.1), log.read_text()
            reply = picker.Pick(text(SHORT, request_id="cli-1"))
            process.terminate()
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    assert reply.request_id == "cli-1"
    assert reply.decode.address in fake_pods.decode
    # SIGTERM stopped it gracefully (uvicorn then exits by the signal it received).
    assert "grpc_stopped" in log.read_text()
