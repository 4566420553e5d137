"""The OpenAI-compatible gateway: schedule each request, forward it, relay the answer.

For every completion or chat request the gateway asks the scheduler for a decode endpoint
(and, when disaggregating, ranked prefill endpoints), then sends the request to the decode
endpoint — the sidecar on a decode pod, or the pod itself in an aggregated pool — with the
prefill choice in `x-prefiller-host-port`. Streams are relayed chunk by chunk; a client that
goes away cancels the upstream request. A request that never started (its connection refused,
or its decode pod's vLLM refused it, as the sidecar's `x-tandem-not-started` says) is scheduled
again without that endpoint, up to three decode endpoints in all, so a pod that just died
loses no request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from tandem.discovery.endpoints import Endpoint
from tandem.errors import CLIENT_CLOSED_REQUEST, ClientDisconnected, OpenAIError
from tandem.http.protocol import (
    ERROR_STAGE_HEADER,
    NOT_STARTED_HEADER,
    PREFILL_FAILED_HEADER,
    PREFILLED_BY_HEADER,
    PREFILLER_HEADER,
    REQUEST_ID_HEADER,
    SIDECAR_REPORT_HEADERS,
    request_id_of,
)
from tandem.http.proxy import (
    cancel_on_disconnect,
    downstream_headers,
    relay_stream,
    upstream_failure,
    upstream_headers,
)
from tandem.http.tracing import Span, SpanKind, current_span, extract, inject, tracer
from tandem.logs import EventLog
from tandem.orchestrator.admission import Admission, Priority, priority_of
from tandem.orchestrator.config import OrchestratorConfig
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.inference_request import InferenceRequest, parse_inference_request
from tandem.orchestrator.kv_events import KVEventSubscriptions
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.router import Loads, Router, log_placement
from tandem.orchestrator.scheduling.plugins.session_affinity_scorer import (
    SESSION_TOKEN_HEADER,
    encode_session_token,
)
from tandem.orchestrator.scheduling.types import SchedulingResult
from tandem.orchestrator.scraper import MetricsScraper

logger = EventLog(__name__)

ROUTES = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
_MODELS_CACHE_S = 10.0


@dataclass(slots=True)
class Gateway:
    """Everything the routes share; built by the app's lifespan."""

    config: OrchestratorConfig
    router: Router
    admission: Admission
    client: httpx.AsyncClient
    transport: httpx.AsyncBaseTransport
    """Inference requests go straight to the transport: the client's cookie, auth and
    redirect handling cost a third of the gateway's time and mean nothing to a proxy."""
    scraper: MetricsScraper | None = None
    kv_events: KVEventSubscriptions | None = None
    models: tuple[float, dict[str, Any]] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def store(self) -> EndpointStore:
        return self.router.store

    @property
    def metrics(self) -> GatewayMetrics:
        return self.router.metrics

    @property
    def clock(self) -> Callable[[], float]:
        return self.router.clock

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self.router.on_endpoints(endpoints)
        if self.scraper is not None:
            self.scraper.sync()
        self.follow_kv_events()

    def follow_kv_events(self) -> None:
        """Subscribe to the endpoints' KV events while the scheduler keeps a precise index."""
        if self.kv_events is not None:
            self.kv_events.sync(self.store.endpoints())

    # -- forwarding -----------------------------------------------------------------------

    async def forward(self, request: Request, route: str) -> Response:
        request_id = request_id_of(request.headers)
        with tracer().start_as_current_span(
            "tandem.gateway", context=extract(request.headers), kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("tandem.request_id", request_id)
            span.set_attribute("tandem.route", route)
            return await self._forward(request, route, request_id, span)

    async def _forward(self, request: Request, route: str, request_id: str, span: Span) -> Response:
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
            priority = priority_of(request.headers)
            self.router.client_fields_dropped(request_id, parsed.dropped_fields)
            response = await cancel_on_disconnect(request, self._send(request, parsed, priority))
            status = response.status_code
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except OpenAIError as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        except (asyncio.CancelledError, ClientDisconnected):
            status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - started)

    async def _send(
        self, request: Request, parsed: InferenceRequest, priority: Priority
    ) -> Response:
        exclude: frozenset[str] = frozenset()
        for attempt in range(1, _DECODE_ATTEMPTS + 1):
            asked = time.perf_counter()
            try:
                placement = await self.admission.admit(parsed.scheduling, priority, exclude)
            except OpenAIError:
                if not exclude:
                    raise
                break  # every endpoint left has been tried
            span = current_span()
            span.set_attribute("tandem.attempt", attempt)
            span.set_attribute("tandem.admission_wait_ms", placement.waited_s * 1000)
            span.set_attribute("tandem.placement_ms", (time.perf_counter() - asked) * 1000)
            decode = placement.result.decode.best.view.endpoint
            try:
                return await self._send_to(request, parsed, placement.result, placement.loads)
            except _Unreachable as exc:
                self.metrics.upstream_errors.labels(exc.kind).inc()
                logger.warning(
                    "upstream_not_started",
                    request_id=parsed.scheduling.request_id,
                    endpoint=decode.name,
                    attempt=attempt,
                    kind=exc.kind,
                    error=exc.reason,
                )
                exclude = exclude | {decode.name}
                last = exc
        raise OpenAIError(
            503,
            f"no decode endpoint could take the request (tried {', '.join(sorted(exclude))}); "
            f"last: decode endpoint {last.endpoint} {last.reason}",
        )

    async def _send_to(
        self, request: Request, parsed: InferenceRequest, result: SchedulingResult, loads: Loads
    ) -> Response:
        """Send a placed request to its decode endpoint and relay the answer; the loads are
        released when the answer ends, whichever way."""
        decode = result.decode.best.view.endpoint
        prefill = [t.view.endpoint for t in result.prefill_targets]
        request_id = parsed.scheduling.request_id
        headers = upstream_headers(request.headers, drop=frozenset({PREFILLER_HEADER}))
        headers[REQUEST_ID_HEADER] = request_id
        if prefill:
            headers[PREFILLER_HEADER] = ",".join(e.address for e in prefill)
        span = current_span()
        span.set_attributes(
            {
                "tandem.decode": decode.name,
                "tandem.prefill": prefill[0].name if prefill else "",
                "tandem.decision": result.decision.value,
                "tandem.reason": result.reason,
            }
        )
        inject(headers)
        sent = time.perf_counter()
        if logger.enabled(logging.DEBUG):
            _log_routed(request_id, result)
        url = f"{self.config.upstream_tls.scheme}://{decode.address}{request.url.path}"
        try:
            upstream_request = self.client.build_request(
                "POST", url, content=parsed.body, headers=headers, params=request.query_params
            )
            upstream = await self.transport.handle_async_request(upstream_request)
            upstream.request = upstream_request
        except httpx.ConnectError:
            self._ended(loads, decode.name, served=False)
            raise _Unreachable(
                decode.name, "connect", "refused the connection or is unreachable"
            ) from None
        except httpx.HTTPError as exc:
            self._ended(loads, decode.name, served=False)
            error, kind = upstream_failure(f"decode endpoint {decode.name}", exc)
            self.metrics.upstream_errors.labels(kind).inc()
            raise error from None
        except BaseException:
            self.router.release(loads)
            raise
        span.set_attribute("tandem.upstream_headers_ms", (time.perf_counter() - sent) * 1000)
        self._record_prefill(loads, upstream.headers, prefill)
        if upstream.status_code == 503 and upstream.headers.get(NOT_STARTED_HEADER):
            # The sidecar could not reach its vLLM: nothing started, another pod may serve it.
            await upstream.aclose()
            self._ended(loads, decode.name, served=False)
            raise _Unreachable(decode.name, "not_started", "has its local vLLM unreachable")
        return await self._answer(parsed, upstream, decode.name, loads)

    async def _answer(
        self, parsed: InferenceRequest, upstream: httpx.Response, decode: str, loads: Loads
    ) -> Response:
        """The decode endpoint's answer to the client: streamed as it comes, or whole; the
        sidecar's reports kept for the orchestrator, the session token added."""
        failed_here = upstream.status_code >= 500 and (
            upstream.headers.get(ERROR_STAGE_HEADER) != "prefill"
        )
        self.router.record_outcome(loads, decode, served=not failed_here)
        out_headers = downstream_headers(upstream.headers)
        for name in SIDECAR_REPORT_HEADERS:
            out_headers.pop(name, None)
        if self.router.encodes_sessions:
            out_headers[SESSION_TOKEN_HEADER] = encode_session_token(decode)
        if parsed.stream and upstream.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            return StreamingResponse(
                self._relay(upstream, decode, loads),
                status_code=upstream.status_code,
                headers=out_headers,
            )
        try:
            body = b"".join([chunk async for chunk in upstream.aiter_raw()])
        except httpx.HTTPError as exc:
            self.router.record_outcome(loads, decode, served=False)
            error, kind = upstream_failure(f"decode endpoint {decode}", exc)
            self.metrics.upstream_errors.labels(kind).inc()
            raise error from None
        finally:
            await upstream.aclose()
            self.router.release(loads)
        return Response(body, status_code=upstream.status_code, headers=out_headers)

    def _ended(self, loads: Loads, endpoint: str, *, served: bool) -> None:
        self.router.record_outcome(loads, endpoint, served=served)
        self.router.release(loads)

    def _record_prefill(
        self, loads: Loads, reported: httpx.Headers, targets: Sequence[Endpoint]
    ) -> None:
        """Feed the prefill endpoints' circuit breakers with what the sidecar reports."""
        if not targets:
            return
        by_address = {e.address: e.name for e in targets}
        for address in filter(None, reported.get(PREFILL_FAILED_HEADER, "").split(",")):
            if (name := by_address.get(address.strip())) is not None:
                self.router.record_outcome(loads, name, served=False)
        if (name := by_address.get(reported.get(PREFILLED_BY_HEADER, ""))) is not None:
            self.router.record_outcome(loads, name, served=True)

    def _relay(self, upstream: httpx.Response, endpoint: str, loads: Loads) -> AsyncIterator[bytes]:
        async def release() -> None:
            self.router.release(loads)

        def failed(kind: str) -> None:
            self.metrics.upstream_errors.labels(kind).inc()
            self.router.record_outcome(loads, endpoint, served=False)

        return relay_stream(
            upstream,
            what=f"decode endpoint {endpoint}",
            on_first_chunk=lambda: self.router.prefill_done(loads),
            on_failure=failed,
            on_close=release,
        )

    # -- models ---------------------------------------------------------------------------

    async def list_models(self) -> dict[str, Any]:
        now = self.clock()
        if self.models is not None and now - self.models[0] < _MODELS_CACHE_S:
            return self.models[1]
        for view in self.store.views(now):
            try:
                scheme = self.config.upstream_tls.scheme
                reply = await self.client.get(f"{scheme}://{view.endpoint.address}/v1/models")
                reply.raise_for_status()
                models: dict[str, Any] = reply.json()
            except (httpx.HTTPError, ValueError):
                continue
            self.models = (now, models)
            return models
        raise OpenAIError(503, "no healthy endpoint to list models from")


_DECODE_ATTEMPTS = 3
"""Decode endpoints tried for a request that none of them started."""


class _Unreachable(Exception):
    """A decode endpoint did not start the request: safe to send it elsewhere."""

    def __init__(self, endpoint: str, kind: str, reason: str) -> None:
        super().__init__(endpoint)
        self.endpoint = endpoint
        self.kind = kind
        self.reason = reason


def _log_routed(request_id: str, result: SchedulingResult) -> None:
    """Where a request went and why, and the scores behind it (debug)."""
    log_placement("request_routed", request_id, result)
    logger.debug(
        "request_scores",
        request_id=request_id,
        decode=result.decode.scores,
        prefill=result.prefill.scores if result.prefill else {},
    )
