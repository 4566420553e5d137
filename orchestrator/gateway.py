"""The OpenAI-compatible gateway: schedule each request, forward it, relay the answer.

For every completion or chat request the gateway asks the scheduler for a decode endpoint
(and, when disaggregating, ranked prefill endpoints), then sends the request to the decode
endpoint — the sidecar on a decode pod, or the pod itself in an aggregated pool — with the
prefill choice in `x-prefiller-host-port`. Streams are relayed chunk by chunk; a client that
goes away cancels the upstream request. A connection refused before any byte was sent is
retried once on another endpoint, so a pod that just died loses no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.config import OrchestratorConfig
from orchestrator.endpoints import EndpointSource, EndpointStore, StaticEndpoints
from orchestrator.errors import ClientDisconnected, GatewayError, install_error_handlers
from orchestrator.inference_request import InferenceRequest, parse_inference_request
from orchestrator.metrics import GatewayMetrics
from orchestrator.proxy import (
    PREFILLER_HEADER,
    REQUEST_ID_HEADER,
    cancel_on_disconnect,
    downstream_headers,
    relay_stream,
    upstream_failure,
    upstream_headers,
)
from orchestrator.scheduling.config import build_scheduler
from orchestrator.scheduling.plugins.session_affinity_scorer import (
    SESSION_TOKEN_HEADER,
    SessionAffinityScorer,
    encode_session_token,
)
from orchestrator.scheduling.scheduler import Scheduler
from orchestrator.scheduling.types import (
    Endpoint,
    EndpointView,
    EngineMetrics,
    PDDecision,
    Role,
    SchedulingError,
    SchedulingResult,
)
from orchestrator.scraper import MetricsScraper

logger = logging.getLogger(__name__)

ROUTES = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
_MODELS_CACHE_S = 10.0


@dataclass(slots=True)
class Gateway:
    """Everything the routes share; built by the app's lifespan."""

    config: OrchestratorConfig
    scheduler: Scheduler
    store: EndpointStore
    client: httpx.AsyncClient
    transport: httpx.AsyncBaseTransport
    """Inference requests go straight to the transport: the client's cookie, auth and
    redirect handling cost a third of the gateway's time and mean nothing to a proxy."""
    metrics: GatewayMetrics
    clock: Callable[[], float]
    scraper: MetricsScraper | None = None
    models: tuple[float, dict[str, Any]] | None = None
    encodes_sessions: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # -- endpoints ------------------------------------------------------------------------

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        added, removed = self.store.set_endpoints(endpoints)
        for name in removed:
            self.scheduler.forget_endpoint(name)
            self.metrics.forget_endpoint(name)
        if added or removed:
            logger.info("endpoints_changed added=%s removed=%s", added, removed)
        if self.scraper is not None:
            self.scraper.sync()

    def on_scrape(
        self, endpoint: Endpoint, metrics: EngineMetrics | None, error: str | None
    ) -> None:
        if error is not None:
            self.metrics.scrape_errors.labels(endpoint.name).inc()
            return
        if metrics is not None and metrics.num_gpu_blocks and metrics.block_size:
            capacity = metrics.num_gpu_blocks * metrics.block_size
            self.scheduler.endpoint_capacity(endpoint.name, capacity)

    def refresh_gauges(self) -> None:
        now = self.clock()
        for endpoint in self.store.endpoints():
            state = self.store.state(endpoint.name)
            if state is None:
                continue
            self.metrics.endpoint_healthy.labels(endpoint.name).set(1 if state.healthy else 0)
            self.metrics.in_flight.labels(endpoint.name).set(state.in_flight)
            if state.metrics is not None:
                age = now - state.metrics.scraped_at
                self.metrics.metrics_age.labels(endpoint.name).set(age)

    # -- scheduling -----------------------------------------------------------------------

    def schedule(self, request: InferenceRequest, exclude: frozenset[str]) -> SchedulingResult:
        now = self.clock()
        views = [v for v in self.store.views(now) if v.name not in exclude]
        limit = self.config.gateway.max_in_flight_per_endpoint
        open_views = [v for v in views if v.in_flight < limit]
        started = time.perf_counter()
        try:
            saturated = any(_can_decode(v) for v in views) and not any(
                _can_decode(v) for v in open_views
            )
            if saturated:
                raise SchedulingError(
                    429,
                    f"every decode endpoint has {limit} requests in flight; retry later",
                    "saturated",
                )
            result = self.scheduler.schedule(request.scheduling, open_views, now)
        except SchedulingError as exc:
            self.metrics.rejections.labels(exc.reason).inc()
            known, healthy = self.store.counts()
            message = exc.message
            if exc.status == 503:
                message = f"{message}; {healthy} of {known} endpoints are healthy"
            headers = {"retry-after": str(self.config.gateway.retry_after_s)}
            raise GatewayError(exc.status, message, headers=headers) from None
        finally:
            self.metrics.scheduling_duration.observe(time.perf_counter() - started)
        self.metrics.pd_decisions.labels(result.decision.value, result.reason).inc()
        self.metrics.picks.labels(result.decode.profile, result.decode.best.name).inc()
        if result.prefill is not None and result.prefill_targets:
            prefill = result.prefill_targets[0].name
            self.metrics.picks.labels(result.prefill.profile, prefill).inc()
        return result

    # -- forwarding -----------------------------------------------------------------------

    async def forward(self, request: Request, route: str) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        started = time.perf_counter()
        status = 500
        try:
            parsed = parse_inference_request(
                route,
                await request.body(),
                request.headers,
                request_id,
                self.config.gateway.chars_per_token,
            )
            response = await cancel_on_disconnect(request, self._send(request, parsed))
            status = response.status_code
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except GatewayError as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        except (asyncio.CancelledError, ClientDisconnected):
            status = 499  # client closed the request (nginx's convention)
            raise
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - started)

    async def _send(self, request: Request, parsed: InferenceRequest) -> Response:
        exclude: frozenset[str] = frozenset()
        for attempt in (1, 2):
            result = self.schedule(parsed, exclude)
            decode = result.decode.best.view.endpoint
            try:
                return await self._send_to(request, parsed, result)
            except _Unreachable as exc:
                self.metrics.upstream_errors.labels("connect").inc()
                logger.warning(
                    "upstream_unreachable request_id=%s endpoint=%s attempt=%d error=%r",
                    parsed.scheduling.request_id, decode.name, attempt, exc.cause,
                )  # fmt: skip
                exclude = exclude | {decode.name}
                last = exc
        raise upstream_failure(f"decode endpoint {last.endpoint}", last.cause)[0]

    async def _send_to(
        self, request: Request, parsed: InferenceRequest, result: SchedulingResult
    ) -> Response:
        decode = result.decode.best.view.endpoint
        prefill = [t.view.endpoint for t in result.prefill_targets]
        request_id = parsed.scheduling.request_id
        headers = upstream_headers(request.headers, drop=frozenset({PREFILLER_HEADER}))
        headers[REQUEST_ID_HEADER] = request_id
        if prefill:
            headers[PREFILLER_HEADER] = ",".join(e.address for e in prefill)
        logger.debug(
            "request_routed request_id=%s decode=%s prefill=%s decision=%s reason=%s",
            request_id, decode.name, prefill[0].name if prefill else "-",
            result.decision.value, result.reason,
        )  # fmt: skip
        if logger.isEnabledFor(logging.DEBUG):
            prefill_scores = result.prefill.scores if result.prefill else {}
            logger.debug(
                "request_scores request_id=%s decode=%s prefill=%s",
                request_id, result.decode.scores, prefill_scores,
            )  # fmt: skip
        url = f"http://{decode.address}{request.url.path}"
        upstream_request = self.client.build_request(
            "POST", url, content=parsed.body, headers=headers, params=request.query_params
        )
        loads = self._acquire(parsed, result)
        try:
            upstream = await self.transport.handle_async_request(upstream_request)
            upstream.request = upstream_request
        except httpx.ConnectError as exc:
            self._release(loads)
            raise _Unreachable(decode.name, exc) from None
        except httpx.HTTPError as exc:
            self._release(loads)
            error, kind = upstream_failure(f"decode endpoint {decode.name}", exc)
            self.metrics.upstream_errors.labels(kind).inc()
            raise error from None
        except BaseException:
            self._release(loads)
            raise
        out_headers = downstream_headers(upstream.headers)
        if self.encodes_sessions:
            out_headers[SESSION_TOKEN_HEADER] = encode_session_token(decode.name)
        if parsed.stream and upstream.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            return StreamingResponse(
                self._relay(upstream, decode.name, loads),
                status_code=upstream.status_code,
                headers=out_headers,
            )
        try:
            body = b"".join([chunk async for chunk in upstream.aiter_raw()])
        except httpx.HTTPError as exc:
            error, kind = upstream_failure(f"decode endpoint {decode.name}", exc)
            self.metrics.upstream_errors.labels(kind).inc()
            raise error from None
        finally:
            await upstream.aclose()
            self._release(loads)
        return Response(body, status_code=upstream.status_code, headers=out_headers)

    def _relay(
        self, upstream: httpx.Response, endpoint: str, loads: _Loads
    ) -> AsyncIterator[bytes]:
        async def release() -> None:
            self._release(loads)

        return relay_stream(
            upstream,
            what=f"decode endpoint {endpoint}",
            on_first_chunk=lambda: self._prefill_done(loads),
            on_failure=lambda kind: self.metrics.upstream_errors.labels(kind).inc(),
            on_close=release,
        )

    def _acquire(self, parsed: InferenceRequest, result: SchedulingResult) -> _Loads:
        decode = result.decode.best.name
        prefill = result.prefill_targets[0].name if result.prefill_targets else None
        tokens = parsed.scheduling.num_prompt_tokens
        self.store.acquire(decode, 0 if prefill else tokens)
        if prefill:
            self.store.acquire(prefill, tokens)
        return _Loads(decode, prefill, tokens)

    def _prefill_done(self, loads: _Loads) -> None:
        if not loads.prefill_done:
            loads.prefill_done = True
            self.store.release_tokens(loads.prefill or loads.decode, loads.tokens)
            if loads.prefill:
                self.store.release(loads.prefill)

    def _release(self, loads: _Loads) -> None:
        self._prefill_done(loads)
        self.store.release(loads.decode)

    # -- models ---------------------------------------------------------------------------

    async def list_models(self) -> dict[str, Any]:
        now = self.clock()
        if self.models is not None and now - self.models[0] < _MODELS_CACHE_S:
            return self.models[1]
        for view in self.store.views(now):
            try:
                reply = await self.client.get(f"http://{view.endpoint.address}/v1/models")
                reply.raise_for_status()
                models: dict[str, Any] = reply.json()
            except (httpx.HTTPError, ValueError):
                continue
            self.models = (now, models)
            return models
        raise GatewayError(503, "no healthy endpoint to list models from")


@dataclass(slots=True)
class _Loads:
    """What one forwarded request adds to the endpoints' in-flight counts."""

    decode: str
    prefill: str | None
    tokens: int
    prefill_done: bool = False


class _Unreachable(Exception):
    def __init__(self, endpoint: str, cause: httpx.HTTPError) -> None:
        super().__init__(endpoint)
        self.endpoint = endpoint
        self.cause = cause


def _can_decode(view: EndpointView) -> bool:
    return view.endpoint.role in (None, Role.DECODE, Role.BOTH, Role.PREFILL_DECODE)


def create_app(
    config: OrchestratorConfig,
    *,
    config_dir: Path | None = None,
    source: EndpointSource | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The gateway app; its lifespan owns the HTTP client, discovery and scraping."""
    import random

    scheduler = build_scheduler(
        config.scheduler_config(config_dir),
        rng=random.Random(config.seed),
        prefix_seed=config.model or "",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway_config = config.gateway
        upstream_transport = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512)
        )
        client = httpx.AsyncClient(
            transport=upstream_transport,
            timeout=httpx.Timeout(
                gateway_config.request_timeout_s, connect=gateway_config.connect_timeout_s
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
        )
        gateway = Gateway(
            config=config,
            scheduler=scheduler,
            store=EndpointStore(config.scrape.staleness_s, config.scrape.failures_before_unhealthy),
            client=client,
            transport=upstream_transport,
            metrics=GatewayMetrics(),
            clock=clock,
            encodes_sessions=any(
                isinstance(p, SessionAffinityScorer)
                and p.parameters.strategy == "encoded_endpoint_header"
                for p in scheduler.plugins.values()
            ),
        )
        gateway.scraper = MetricsScraper(
            gateway.store, client, clock,
            interval_s=config.scrape.interval_s, timeout_s=config.scrape.timeout_s,
            on_scrape=gateway.on_scrape,
        )  # fmt: skip
        discovery = source or StaticEndpoints(e.endpoint() for e in config.endpoints)
        gateway.tasks.append(asyncio.create_task(discovery.run(gateway.on_endpoints)))
        app.state.gateway = gateway
        try:
            yield
        finally:
            for task in gateway.tasks:
                task.cancel()
            for task in gateway.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await gateway.scraper.stop()
            await client.aclose()

    app = FastAPI(title="tandem orchestrator", lifespan=lifespan)
    install_error_handlers(app)

    def gateway_of(request: Request) -> Gateway:
        gateway: Gateway = request.app.state.gateway
        return gateway

    async def completions(request: Request) -> Response:
        return await gateway_of(request).forward(request, "completions")

    async def chat_completions(request: Request) -> Response:
        return await gateway_of(request).forward(request, "chat")

    # Plain Starlette routes: the hot path needs none of FastAPI's parameter handling.
    app.router.add_route("/v1/completions", completions, methods=["POST"])
    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        return await gateway_of(request).list_models()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        gateway = gateway_of(request)
        views = gateway.store.views(gateway.clock())
        decoders = [v.name for v in views if _can_decode(v)]
        known, healthy = gateway.store.counts()
        body: dict[str, object] = {"ready": bool(decoders), "endpoints": known, "healthy": healthy}
        if not decoders:
            body["reason"] = "no healthy decode-capable endpoint"
        return JSONResponse(body, status_code=200 if decoders else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        gateway = gateway_of(request)
        gateway.refresh_gauges()
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["Gateway", "PDDecision", "create_app"]
