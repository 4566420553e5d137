"""The routing sidecar's request flow on a decode pod: remote prefill, KV handoff, local
decode (its app and lifespan are `tandem.sidecar.app`'s).

Requests arrive on the pod's serving port (8000) from the orchestrator. Without
`x-prefiller-host-port` they pass straight through to the local vLLM (8200). With it, the
sidecar checks every target against the allowlist, runs the prefill on the first candidate
that answers, and sends the client's request with the returned `kv_transfer_params` to the
local vLLM, which pulls the KV over NIXL and decodes; the answer is relayed as it streams.
A remote prefill that cannot be had becomes a local prefill (counted and logged by reason);
a decode whose KV load failed before its first token is retried once with local prefill.
Every other route (health, models, metrics, ...) is proxied to the local vLLM unchanged;
/metrics also carries the sidecar's own `tandem_sidecar_*` metrics.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tandem.errors import OpenAIError
from tandem.http.protocol import (
    ERROR_STAGE_HEADER,
    NOT_STARTED_HEADER,
    PREFILL_FAILED_HEADER,
    PREFILLED_BY_HEADER,
    PREFILLER_HEADER,
    REQUEST_ID_HEADER,
    json_object,
    strip_tandem_fields,
)
from tandem.http.proxy import (
    cancel_on_disconnect,
    downstream_headers,
    relay_stream,
    upstream_failure,
    upstream_headers,
)
from tandem.http.tracing import Span, SpanKind, extract, inject, tracer
from tandem.logs import EventLog
from tandem.sidecar.allowlist import HostPort, PrefillAllowlist
from tandem.sidecar.config import SidecarConfig
from tandem.sidecar.flow import Next, after_prefill, tries_next_candidate
from tandem.sidecar.metrics import SidecarMetrics
from tandem.sidecar.prefill import PrefillOutcome, prefill_body, run_prefill

logger = EventLog(__name__)

INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
_KV_LOAD_FAILURE = b'"type": "InternalServerError"'
_KV_LOAD_FAILURE_COMPACT = b'"type":"InternalServerError"'


@dataclass(slots=True)
class _Leg:
    """One request to the local vLLM, and what to do if its KV load fails."""

    path: str
    body: bytes
    headers: dict[str, str]
    stream: bool
    prefilled: PrefillOutcome | None = None
    """Set while the body carries a remote prefill's kv_transfer_params that the local vLLM
    has not been handed yet (if the request ends now, the prefill is orphaned)."""
    mode: str = "local"
    """How the request was served, for `tandem_sidecar_requests_total`."""
    report: dict[str, str] = field(default_factory=dict)
    """What the orchestrator learns on the answer: which prefill targets failed or served."""


@dataclass(slots=True)
class Sidecar:
    config: SidecarConfig
    allowlist: PrefillAllowlist
    vllm: httpx.AsyncClient
    vllm_transport: httpx.AsyncBaseTransport
    """Hot-path requests go straight to the transport, skipping the client's cookie, auth and
    redirect layers, which cost a proxy a third of its time and do nothing for it."""
    prefill_client: httpx.AsyncClient
    metrics: SidecarMetrics

    # -- inference ------------------------------------------------------------------------

    async def inference(self, request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        with tracer().start_as_current_span(
            "tandem.sidecar", context=extract(request.headers), kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("tandem.request_id", request_id)
            self.metrics.in_flight.inc()
            try:
                return await self._inference(request, request_id, span)
            finally:
                self.metrics.in_flight.dec()

    async def _inference(self, request: Request, request_id: str, span: Span) -> Response:
        headers = upstream_headers(request.headers, drop=frozenset({PREFILLER_HEADER}))
        headers[REQUEST_ID_HEADER] = request_id
        body = await request.body()
        targets = request.headers.get(PREFILLER_HEADER, "").strip()
        try:
            payload = json_object(body)
        except OpenAIError as exc:
            self.metrics.errors.labels("bad_body").inc()
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        if dropped := strip_tandem_fields(payload):
            # The sidecar sets kv_transfer_params itself, after its own prefill.
            body = json.dumps(payload).encode()
            for field in dropped:
                self.metrics.client_fields_dropped.labels(field).inc()
                logger.warning("client_field_dropped", request_id=request_id, field=field)
        leg = _Leg(request.url.path, body, headers, bool(payload.get("stream")))
        try:
            if not targets:
                # Nothing to prefill remotely: vLLM answers as is, including its own error
                # for a body it refuses.
                response = await cancel_on_disconnect(request, self._decode(leg, request_id))
            else:
                candidates = self._allowed(targets, request_id)
                response = await cancel_on_disconnect(
                    request, self._disaggregated(leg, payload, candidates, request_id)
                )
        except OpenAIError as exc:
            exc.headers.update(leg.report)
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        self.metrics.requests.labels(leg.mode).inc()
        span.set_attribute("tandem.mode", leg.mode)
        span.set_attribute("http.response.status_code", response.status_code)
        response.headers.update(leg.report)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    def _allowed(self, header: str, request_id: str) -> list[HostPort]:
        candidates = []
        for item in header.split(","):
            try:
                target = HostPort.parse(item)
            except ValueError as exc:
                self.metrics.errors.labels("bad_prefill_header").inc()
                raise OpenAIError(400, f"{PREFILLER_HEADER}: {exc}") from None
            if not self.allowlist.allows(target):
                self.metrics.errors.labels("prefill_target_refused").inc()
                logger.warning("prefill_target_refused", request_id=request_id, target=target)
                raise OpenAIError(
                    403,
                    f"prefill target {target} is not a known prefill endpoint of this pool; "
                    "the request was not forwarded",
                )
            candidates.append(target)
        return candidates

    async def _disaggregated(
        self, leg: _Leg, payload: dict[str, Any], candidates: list[HostPort], request_id: str
    ) -> Response:
        policy = self.config.prefill_failure_policy
        with tracer().start_as_current_span("tandem.sidecar.prefill", kind=SpanKind.CLIENT) as span:
            headers = dict(leg.headers)
            inject(headers)
            outcome = await run_prefill(
                self.prefill_client, candidates, leg.path, prefill_body(payload), headers,
                self.metrics, request_id, next_candidate=tries_next_candidate(policy),
                scheme=self.config.prefill_tls.scheme,
            )  # fmt: skip
            span.set_attributes(
                {
                    "tandem.prefill_target": str(outcome.target or ""),
                    "tandem.prefill_ms": outcome.seconds * 1000,
                    "tandem.prefill_failed": ",".join(str(t) for t in outcome.failed),
                    "tandem.prefill_failure": outcome.fallback_reason or "",
                }
            )
        if outcome.failed:
            leg.report[PREFILL_FAILED_HEADER] = ",".join(str(t) for t in outcome.failed)
        if outcome.params is not None and outcome.target is not None:
            leg.report[PREFILLED_BY_HEADER] = str(outcome.target)
        step = after_prefill(
            prefilled=outcome.params is not None,
            client_error=outcome.client_error is not None,
            failure=outcome.fallback_reason,
            policy=policy,
        )
        if step.next is Next.RELAY_CLIENT_ERROR and outcome.client_error is not None:
            self.metrics.errors.labels("prefill_4xx").inc()
            reply = outcome.client_error
            return Response(
                outcome.client_error_body,
                status_code=reply.status_code,
                headers=downstream_headers(reply.headers),
            )
        if step.next is Next.PREFILL_LOCALLY:
            return await self._fallback(leg, step.reason or "", request_id)
        if step.next is Next.FAIL:
            self.metrics.errors.labels(f"prefill_failed_{step.reason}").inc()
            logger.warning(
                "prefill_failed_request", request_id=request_id, reason=step.reason, policy=policy
            )
            raise OpenAIError(
                step.status or 502,
                f"prefill failed ({step.reason}, last tried {outcome.target}); the sidecar's "
                f"prefill_failure_policy is {policy}, so it did not prefill locally",
                headers={ERROR_STAGE_HEADER: "prefill"},
            )
        leg.mode = "disaggregated"
        leg.body = json.dumps({**payload, "kv_transfer_params": outcome.params}).encode()
        leg.prefilled = outcome
        logger.debug(
            "prefill_done",
            request_id=request_id,
            target=outcome.target,
            seconds=f"{outcome.seconds:.4f}",
        )
        try:
            return await self._decode(leg, request_id)
        finally:
            if leg.prefilled is not None:
                # The local vLLM never got the KV handle (client gone, or vLLM down): the
                # prefill pod holds the blocks until their lease expires.
                self.metrics.orphaned_prefills.inc()
                logger.warning("prefill_orphaned", request_id=request_id, target=outcome.target)

    async def _fallback(self, leg: _Leg, reason: str, request_id: str) -> Response:
        self.metrics.fallbacks.labels(reason).inc()
        leg.mode = "fallback"
        logger.warning("prefill_fallback", request_id=request_id, reason=reason)
        leg.prefilled = None
        return await self._decode(leg, request_id)

    async def _decode(self, leg: _Leg, request_id: str) -> Response:
        """Send a leg to the local vLLM and relay its answer."""
        handoff_started = time.perf_counter()
        prefilled = leg.prefilled
        leg.prefilled = None  # from here the local vLLM reads the KV or releases it
        upstream = await self._send(leg, prefilled)
        if prefilled is not None and self.config.kv_load_failure_policy == "recompute":
            failed, chunks = await self._peek_kv_load_failure(upstream, leg)
            if failed:
                await upstream.aclose()
                leg.body = _without_transfer_params(leg.body)
                return await self._fallback(leg, "kv_load_failed", request_id)
        else:
            chunks = None
        out_headers = downstream_headers(upstream.headers)

        def first_chunk() -> None:
            if prefilled is not None:
                self.metrics.kv_handoff.observe(time.perf_counter() - handoff_started)

        is_sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        if leg.stream and is_sse:
            relayed = relay_stream(
                upstream, what="local vLLM", chunks=chunks, on_first_chunk=first_chunk,
                on_failure=lambda kind: self.metrics.errors.labels(f"decode_{kind}").inc(),
            )  # fmt: skip
            if prefilled is not None and self.config.rewrite_cached_tokens:
                relayed = _rewrite_sse(relayed, _cached_tokens(prefilled))
            return StreamingResponse(relayed, status_code=upstream.status_code, headers=out_headers)
        try:
            body = await upstream.aread()
        except httpx.HTTPError as exc:
            error, kind = upstream_failure("local vLLM", exc)
            self.metrics.errors.labels(f"decode_{kind}").inc()
            raise error from None
        finally:
            await upstream.aclose()
        first_chunk()
        if prefilled is not None and self.config.rewrite_cached_tokens:
            body = _rewrite_json(body, _cached_tokens(prefilled))
            out_headers.pop("content-length", None)
        return Response(body, status_code=upstream.status_code, headers=out_headers)

    async def _send(self, leg: _Leg, prefilled: PrefillOutcome | None) -> httpx.Response:
        with tracer().start_as_current_span("tandem.sidecar.decode", kind=SpanKind.CLIENT) as span:
            span.set_attribute("tandem.kv_from", str(prefilled.target) if prefilled else "")
            headers = dict(leg.headers)
            inject(headers)
            sent = time.perf_counter()
            response = await self._post_to_vllm(leg, prefilled, headers)
            span.set_attribute("tandem.vllm_headers_ms", (time.perf_counter() - sent) * 1000)
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    async def _post_to_vllm(
        self, leg: _Leg, prefilled: PrefillOutcome | None, headers: dict[str, str]
    ) -> httpx.Response:
        request = self.vllm.build_request("POST", leg.path, content=leg.body, headers=headers)
        try:
            response = await self.vllm_transport.handle_async_request(request)
            response.request = request
            self.metrics.vllm_up.set(1)
            return response
        except httpx.HTTPError as exc:
            # No answer at all: whether vLLM ever took the handle is unknown, so the prefill
            # counts as orphaned (its lease frees it). A client leaving once vLLM has the
            # request is not an orphan: vLLM aborts and releases the producer's KV.
            leg.prefilled = prefilled
            error, kind = upstream_failure("local vLLM", exc)
            self.metrics.errors.labels(f"decode_{kind}").inc()
            if isinstance(exc, httpx.ConnectError):
                self.metrics.vllm_up.set(0)
                error.headers[NOT_STARTED_HEADER] = "1"
            raise error from None

    async def _peek_kv_load_failure(
        self, upstream: httpx.Response, leg: _Leg
    ) -> tuple[bool, AsyncIterator[bytes] | None]:
        """Whether vLLM failed the request before its first token (KV load failure under
        the `fail` policy: a 500, or an SSE stream whose first event is an error), and the
        body's chunks with any peeked chunk put back in front."""
        if upstream.status_code == 500:
            return True, None
        if not (leg.stream and upstream.status_code == 200):
            return False, None
        chunks = upstream.aiter_raw()
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return False, None
        if first.startswith(b'data: {"error"') and (
            _KV_LOAD_FAILURE in first or _KV_LOAD_FAILURE_COMPACT in first
        ):
            return True, None
        return False, _prepended(first, chunks)

    # -- everything else ------------------------------------------------------------------

    async def passthrough(self, request: Request) -> Response:
        if request.url.path == "/metrics":
            return await self._metrics(request)
        headers = upstream_headers(request.headers)
        outgoing = self.vllm.build_request(
            request.method, request.url.path, params=request.query_params,
            content=await request.body(), headers=headers,
        )  # fmt: skip
        try:
            upstream = await self.vllm_transport.handle_async_request(outgoing)
            upstream.request = outgoing
        except httpx.HTTPError as exc:
            raise upstream_failure("local vLLM", exc)[0] from None
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(
                relay_stream(upstream, what="local vLLM"),
                status_code=upstream.status_code,
                headers=downstream_headers(upstream.headers),
            )
        try:
            body = await upstream.aread()
        finally:
            await upstream.aclose()
        return Response(body, upstream.status_code, headers=_without_length(upstream.headers))

    async def _metrics(self, request: Request) -> Response:
        """vLLM's metrics followed by the sidecar's; the sidecar's alone, with
        `tandem_sidecar_vllm_up 0`, when vLLM is down (the orchestrator's scraper then sees
        no engine metrics and stops routing to the pod at once)."""
        try:
            reply = await self.vllm.get("/metrics", params=request.query_params)
        except httpx.HTTPError:
            reply = None
        up = reply is not None and reply.status_code == 200
        self.metrics.vllm_up.set(1 if up else 0)
        own = generate_latest(self.metrics.registry)
        if reply is None or not up:
            return Response(own, media_type=CONTENT_TYPE_LATEST)
        return Response(reply.content + own, media_type=CONTENT_TYPE_LATEST)


async def _prepended(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


"""The status of a prefill failure the policy does not absorb; others (5xx, no KV handle)
are 502."""


def _without_length(headers: httpx.Headers) -> dict[str, str]:
    out = downstream_headers(headers)
    out.pop("content-length", None)
    out.pop("content-encoding", None)
    return out


def _without_transfer_params(body: bytes) -> bytes:
    payload = json.loads(body)
    payload.pop("kv_transfer_params", None)
    return json.dumps(payload).encode()


def _cached_tokens(outcome: PrefillOutcome) -> int:
    return int((outcome.params or {}).get("remote_prefill_cached_tokens") or 0)


def _set_cached(usage: Any, cached: int) -> None:
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens_details"), dict):
        usage["prompt_tokens_details"]["cached_tokens"] = cached


def _rewrite_json(body: bytes, cached: int) -> bytes:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body
    _set_cached(payload.get("usage") if isinstance(payload, dict) else None, cached)
    return json.dumps(payload).encode()


async def _rewrite_sse(chunks: AsyncIterator[bytes], cached: int) -> AsyncIterator[bytes]:
    """Rewrite usage in each complete SSE event (events may span chunks)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *events, pending = pending.split(b"\n\n")
        out = [_rewrite_event(event, cached) for event in events]
        if out:
            yield b"".join(event + b"\n\n" for event in out)
    if pending:
        yield pending


def _rewrite_event(event: bytes, cached: int) -> bytes:
    if not event.startswith(b"data: {") or b'"usage"' not in event:
        return event
    try:
        payload = json.loads(event[len(b"data: ") :])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return event
    _set_cached(payload.get("usage"), cached)
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode()
