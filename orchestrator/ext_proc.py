"""Envoy's ext_proc endpoint picker: the Gateway API Inference Extension protocol.

Users who keep Envoy (or kgateway, Istio) in front of their pods point its `ext_proc` filter
here. Envoy opens one `Process` stream per HTTP request; this servicer picks the endpoints
with the very `Router` the HTTP gateway uses (same scheduler, same in-flight counts) and tells
Envoy where to send the request. Envoy keeps moving the bytes.

One stream, for the processing mode in `PROCESSING_MODE` (headers and trailers SEND, bodies
FULL_DUPLEX_STREAMED):

    Envoy                                   picker
    request_headers  ─────────────────────▶ kept (`:path` says completions or chat); with
                                            end_of_stream (no body) the pick is made now
    request_body …   ─────────────────────▶ buffered until end_of_stream (or trailers)
                     ◀───────────────────── request_headers: destination, prefiller and
                                            request id header mutation, clear_route_cache,
                                            `envoy.lb` dynamic metadata
                     ◀───────────────────── request_body …: the same body, ≤ 62,000 bytes
                                            each, end_of_stream on the last one; without
                                            the fields only tandem may set
                                            (`kv_transfer_params`, its content-length
                                            set to match) where the client sent them
                     ◀───────────────────── request_trailers, when the request ended in them
    response_headers ─────────────────────▶ prefill counted done; answered
    response_body …  ─────────────────────▶ echoed back unchanged
    response_trailers ────────────────────▶ answered

The request's load is counted when its pick is answered and released exactly once: when the
response ends, or when the stream ends for any other reason (Envoy cancels it when the client
goes away). A request no endpoint can take ends the stream with an ImmediateResponse: 503
(none healthy), 429 with Retry-After (all saturated), 400 (a body that is not a completions
or chat request), in OpenAI's error shape, with the reason in `x-tandem-reject-reason`.

Protocol sources: kubernetes-sigs/gateway-api-inference-extension
docs/proposals/004-endpoint-picker-protocol/README.md (destination header, `envoy.lb`
metadata with ordered fallbacks, 503/429 immediate responses) and pkg/common/envoy/chunking.go
(62,000-byte body chunks); envoyproxy/envoy
api/envoy/extensions/filters/http/ext_proc/v3/processing_mode.proto (FULL_DUPLEX_STREAMED:
trailers SEND, the server returns the body as StreamedBodyResponse, headers-body-trailers
order).

The header `x-gateway-destination-endpoint` holds the primary endpoint alone, because
Envoy's ORIGINAL_DST cluster reads it as one address; the `envoy.lb` metadata entry lists
the primary and then the decode endpoints the scheduler ranked after it, for proxies that
retry down the list.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from tandem.errors import REJECT_REASON_HEADER, OpenAIError, error_body
from tandem.http.protocol import PREFILLER_HEADER, REQUEST_ID_HEADER, request_id_of
from tandem.logs import EventLog
from tandem.orchestrator.config import OrchestratorConfig
from tandem.orchestrator.gateway import ROUTES
from tandem.orchestrator.inference_request import parse_inference_request
from tandem.orchestrator.router import Loads, Router
from tandem.orchestrator.scheduling.plugins.session_affinity_scorer import (
    SESSION_TOKEN_HEADER,
    encode_session_token,
)
from tandem.orchestrator.scheduling.types import SchedulingRequest, SchedulingResult

logger = EventLog(__name__)

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
"""The gRPC service Envoy's ext_proc filter calls, as health checks name it."""
DESTINATION_HEADER = "x-gateway-destination-endpoint"
"""Where Envoy sends the request; also the key inside the metadata namespace."""
DESTINATION_METADATA_NAMESPACE = "envoy.lb"
BODY_CHUNK_BYTES = 62_000
"""Largest body chunk sent back: under the 64 KiB per chunk some Envoy deployments accept
(kubernetes-sigs/gateway-api-inference-extension: pkg/common/envoy/chunking.go)."""
MAX_REQUEST_BODY_BYTES = 32 * 1024 * 1024
"""A request body is held in memory until it is complete; larger ones are refused (413)."""

PROCESSING_MODE: Mapping[str, str] = {
    "request_header_mode": "SEND",
    "request_body_mode": "FULL_DUPLEX_STREAMED",
    "request_trailer_mode": "SEND",
    "response_header_mode": "SEND",
    "response_body_mode": "FULL_DUPLEX_STREAMED",
    "response_trailer_mode": "SEND",
}
"""The ext_proc filter's `processing_mode` this servicer is written for."""

_REJECT_REASONS = {
    400: "invalid_request",
    413: "request_too_large",
    429: "saturated",
    500: "internal_error",
    503: "no_endpoints",
}
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(slots=True)
class _Exchange:
    """One HTTP request's state for the life of its stream."""

    request_id: str = ""
    route: str | None = None
    """"completions" or "chat"; None for any other path (scheduled without a prompt)."""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    picked: bool = False
    loads: Loads | None = None
    decode: str = ""
    response_ended: bool = False


class _Rejected(Exception):
    """The stream ends with this ImmediateResponse."""

    def __init__(self, reply: Any, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


class ExtProcPicker:
    """The `envoy.service.ext_proc.v3.ExternalProcessor` servicer over a shared `Router`.

    Counts each stream in the router's `tandem_ext_proc_streams_total{outcome}`: `completed`
    (the response ended), `abandoned` (the stream ended first: client gone, Envoy's own
    error) and the rejection reasons of `x-tandem-reject-reason`."""

    def __init__(
        self,
        router: Router,
        config: OrchestratorConfig,
        *,
        max_body_bytes: int = MAX_REQUEST_BODY_BYTES,
    ) -> None:
        self.router = router
        self.config = config
        self.max_body_bytes = max_body_bytes

    async def Process(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Serve one HTTP request's stream of ext_proc messages."""
        exchange = _Exchange()
        outcome = "abandoned"
        try:
            async for message in requests:
                try:
                    replies = self._on_message(exchange, message)
                except _Rejected as rejected:
                    outcome = rejected.reason
                    await context.write(rejected.reply)
                    return
                for reply in replies:
                    await context.write(reply)
        finally:
            self._release(exchange)
            if exchange.response_ended:
                outcome = "completed"
            self.router.metrics.ext_proc_streams.labels(outcome).inc()

    # -- messages -------------------------------------------------------------------------

    def _on_message(self, exchange: _Exchange, message: Any) -> list[Any]:
        """The replies to one message from Envoy; raises _Rejected to end the stream."""
        try:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                return self._on_request_headers(exchange, message.request_headers)
            if kind == "request_body":
                return self._on_request_body(exchange, message.request_body)
            if kind == "request_trailers":
                return self._on_request_trailers(exchange)
            if kind == "response_headers":
                return self._on_response_headers(exchange, message.response_headers)
            if kind == "response_body":
                return self._on_response_body(exchange, message.response_body)
            if kind == "response_trailers":
                self._end_response(exchange)
                return [ext_proc_pb2.ProcessingResponse(response_trailers=_TRAILERS_REPLY)]
            return []
        except OpenAIError as exc:
            raise self._rejection(exchange, exc) from None
        except Exception as exc:
            logger.exception(
                "ext_proc_failed", request_id=exchange.request_id or "-", error=repr(exc)
            )
            error = OpenAIError(500, f"internal error in the endpoint picker: {type(exc).__name__}")
            raise self._rejection(exchange, error) from None

    def _on_request_headers(self, exchange: _Exchange, headers: Any) -> list[Any]:
        for header in headers.headers.headers:
            exchange.headers[header.key.lower()] = _header_value(header)
        exchange.request_id = request_id_of(exchange.headers)
        path = exchange.headers.get(":path", "").split("?", 1)[0]
        exchange.route = ROUTES.get(path)
        if headers.end_of_stream:
            return [self._pick(exchange, None)]
        return []

    def _on_request_body(self, exchange: _Exchange, body: Any) -> list[Any]:
        if exchange.picked:  # nothing more is expected once the pick is made; pass it on
            return [_body_reply("request_body", body.body, body.end_of_stream)]
        if len(exchange.body) + len(body.body) > self.max_body_bytes:
            raise OpenAIError(
                413, f"request body is larger than {self.max_body_bytes} bytes; send less"
            )
        exchange.body += body.body
        if not body.end_of_stream:
            return []
        routing = self._pick(exchange, bytes(exchange.body))  # may rewrite exchange.body
        return [routing, *_body_chunks(bytes(exchange.body), end_of_stream=True)]

    def _on_request_trailers(self, exchange: _Exchange) -> list[Any]:
        """Trailers end a request whose last body chunk did not say end_of_stream."""
        replies = []
        if not exchange.picked:
            replies.append(self._pick(exchange, bytes(exchange.body)))  # may rewrite the body
            if exchange.body:
                replies.extend(_body_chunks(bytes(exchange.body), end_of_stream=False))
        replies.append(ext_proc_pb2.ProcessingResponse(request_trailers=_TRAILERS_REPLY))
        return replies

    def _on_response_headers(self, exchange: _Exchange, headers: Any) -> list[Any]:
        if exchange.loads is not None:
            self.router.prefill_done(exchange.loads)
        response_headers = {REQUEST_ID_HEADER: exchange.request_id}
        if self.router.encodes_sessions and exchange.decode:
            response_headers[SESSION_TOKEN_HEADER] = encode_session_token(exchange.decode)
        if headers.end_of_stream:
            self._end_response(exchange)
        common = ext_proc_pb2.CommonResponse(header_mutation=_mutation(response_headers))
        reply = ext_proc_pb2.HeadersResponse(response=common)
        return [ext_proc_pb2.ProcessingResponse(response_headers=reply)]

    def _on_response_body(self, exchange: _Exchange, body: Any) -> list[Any]:
        if body.end_of_stream:
            self._end_response(exchange)
        return [_body_reply("response_body", body.body, body.end_of_stream)]

    # -- picking and load -----------------------------------------------------------------

    def _pick(self, exchange: _Exchange, body: bytes | None) -> Any:
        """Schedule the request, count its load and answer its request headers."""
        rewritten: int | None = None
        if exchange.route is None or body is None:
            scheduling = SchedulingRequest(exchange.request_id, "", 0, _plain(exchange.headers))
        else:
            parsed = parse_inference_request(
                exchange.route,
                body,
                _plain(exchange.headers),
                exchange.request_id,
                self.config.gateway.chars_per_token,
            )
            scheduling = parsed.scheduling
            if parsed.dropped_fields:  # only tandem may set them: the pod gets the body without
                exchange.body = bytearray(parsed.body)
                rewritten = len(parsed.body)
                self.router.client_fields_dropped(exchange.request_id, parsed.dropped_fields)
        result = self.router.schedule(scheduling)
        exchange.loads = self.router.acquire(scheduling, result)
        exchange.picked = True
        exchange.decode = result.decode.best.name
        logger.debug(
            "request_routed",
            request_id=exchange.request_id,
            decode=exchange.decode,
            prefill=exchange.loads.prefill or "-",
            decision=result.decision.value,
            reason=result.reason,
        )
        return _routing_reply(exchange.request_id, result, rewritten)

    def _end_response(self, exchange: _Exchange) -> None:
        exchange.response_ended = True
        self._release(exchange)

    def _release(self, exchange: _Exchange) -> None:
        """Give back the request's load; a second call finds nothing to give."""
        loads, exchange.loads = exchange.loads, None
        if loads is not None:
            self.router.release(loads)

    def _rejection(self, exchange: _Exchange, error: OpenAIError) -> _Rejected:
        reason = error.reject_reason or _REJECT_REASONS.get(error.status, "error")
        client_mistake = error.status < 500 and error.status != 429
        (logger.info if client_mistake else logger.warning)(
            "ext_proc_rejected",
            request_id=exchange.request_id or "-",
            status=error.status,
            reason=reason,
            message=error.message,
        )
        headers = {
            **error.headers,
            "content-type": "application/json",
            REJECT_REASON_HEADER: reason,
        }
        if exchange.request_id:
            headers[REQUEST_ID_HEADER] = exchange.request_id
        body = json.dumps(error_body(error.status, error.message, error.param)).encode()
        immediate = ext_proc_pb2.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=_mutation(headers),
            body=body,
            details=f"tandem_{reason}",
        )
        return _Rejected(ext_proc_pb2.ProcessingResponse(immediate_response=immediate), reason)


def add_ext_proc_servicer(
    server: grpc.aio.Server, router: Router, config: OrchestratorConfig
) -> None:
    """Serve the endpoint picker on `server`, picking with `router`."""
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(ExtProcPicker(router, config), server)


# -- messages to Envoy ------------------------------------------------------------------

_TRAILERS_REPLY = ext_proc_pb2.TrailersResponse()


def _routing_reply(request_id: str, result: SchedulingResult, body_bytes: int | None) -> Any:
    """The answer to the request headers: where to go, as header mutation and metadata, and
    the new `content-length` of a body the picker rewrote (`body_bytes`)."""
    decode = result.decode.best.view.endpoint.address
    prefill = [target.view.endpoint.address for target in result.prefill_targets]
    headers = {DESTINATION_HEADER: decode, REQUEST_ID_HEADER: request_id}
    if body_bytes is not None:
        headers["content-length"] = str(body_bytes)
    if prefill:
        # Ranked, as the HTTP gateway sends it: the sidecar falls back down the list.
        headers[PREFILLER_HEADER] = ",".join(prefill)
    # A client's own prefiller header must never reach the sidecar (set replaces it).
    removed = () if prefill else (PREFILLER_HEADER,)
    candidates = ",".join(pick.view.endpoint.address for pick in result.decode.picks)
    metadata = struct_pb2.Struct()
    metadata.update({DESTINATION_METADATA_NAMESPACE: {DESTINATION_HEADER: candidates}})
    common = ext_proc_pb2.CommonResponse(
        header_mutation=_mutation(headers, removed), clear_route_cache=True
    )
    return ext_proc_pb2.ProcessingResponse(
        request_headers=ext_proc_pb2.HeadersResponse(response=common), dynamic_metadata=metadata
    )


def _body_chunks(body: bytes, *, end_of_stream: bool) -> list[Any]:
    """The request body handed back in chunks Envoy accepts (an empty body is one chunk)."""
    starts = range(0, len(body), BODY_CHUNK_BYTES) if body else range(1)
    last = starts[-1]
    return [
        _body_reply(
            "request_body", body[start : start + BODY_CHUNK_BYTES], end_of_stream and start == last
        )
        for start in starts
    ]


def _body_reply(direction: str, chunk: bytes, end_of_stream: bool) -> Any:
    streamed = ext_proc_pb2.StreamedBodyResponse(body=chunk, end_of_stream=end_of_stream)
    mutation = ext_proc_pb2.BodyMutation(streamed_response=streamed)
    reply = ext_proc_pb2.BodyResponse(response=ext_proc_pb2.CommonResponse(body_mutation=mutation))
    return ext_proc_pb2.ProcessingResponse(**{direction: reply})


def _mutation(headers: Mapping[str, str], removed: Sequence[str] = ()) -> Any:
    """Set (replacing any existing value) and remove headers. Values go in `raw_value`, where
    Envoy reads them by default (envoyproxy/envoy:
    source/extensions/filters/http/ext_proc/mutation_utils.cc)."""
    return ext_proc_pb2.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
                append_action=_OVERWRITE,
            )
            for key, value in headers.items()
        ],
        remove_headers=list(removed),
    )


def _header_value(header: Any) -> str:
    """Envoy sends `raw_value` (or `value` with the send_header_raw_value runtime flag off)."""
    if header.raw_value:
        return str(header.raw_value.decode("utf-8", "replace"))
    return str(header.value)


def _plain(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's headers without HTTP/2 pseudo-headers, as the scheduler sees them."""
    return {key: value for key, value in headers.items() if not key.startswith(":")}
