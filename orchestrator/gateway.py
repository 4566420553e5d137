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
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from orchestrator.config import OrchestratorConfig
from orchestrator.endpoints import EndpointStore
from orchestrator.errors import ClientDisconnected, GatewayError
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

    def replace_scheduler(self, scheduler: Scheduler) -> None:
        """Switch to a reloaded configuration's scheduler between two requests."""
        kept = scheduler.inherit(self.scheduler)
        self.scheduler = scheduler
        self.encodes_sessions = encodes_sessions(scheduler)
        for endpoint in self.store.endpoints():
            state = self.store.state(endpoint.name)
            if state is not None and state.metrics is not None:
                self.on_scrape(endpoint, state.metrics, None)
        logger.info("scheduler_replaced prefix_index_kept=%s", kept)

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
            saturated = any(can_decode(v) for v in views) and not any(
                can_decode(v) for v in open_views
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
                # Counts like a failed scrape: a pod that refuses requests is soon left out
                # for everyone, not only retried around for this request.
                if self.store.record_scrape_failure(decode.name, f"refused: {exc.cause!r}"):
                    logger.warning("endpoint_unhealthy endpoint=%s error=refused", decode.name)
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


def can_decode(view: EndpointView) -> bool:
    """Whether an endpoint can serve as the decode (primary) target."""
    return view.endpoint.role in (None, Role.DECODE, Role.BOTH, Role.PREFILL_DECODE)


def encodes_sessions(scheduler: Scheduler) -> bool:
    """Whether responses must carry the session header the affinity scorer reads back."""
    return any(
        isinstance(plugin, SessionAffinityScorer)
        and plugin.parameters.strategy == "encoded_endpoint_header"
        for plugin in scheduler.plugins.values()
    )
