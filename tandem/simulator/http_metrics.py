"""The HTTP metrics vLLM's API server exposes through prometheus-fastapi-instrumentator.

vLLM instruments every route except its probes and `/metrics` with the instrumentator's
default metrics (vllm-project/vllm: vllm/entrypoints/serve/instrumentator/metrics.py): names,
labels, buckets and semantics below are that library's `metrics.default()` (8.x) with its
default options: status codes grouped as `2xx`, an unmatched path reported as handler `none`,
sizes read from Content-Length (0 without one), latency until the response body is sent.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Summary
from starlette.types import ASGIApp, Message, Receive, Scope, Send

EXCLUDED_HANDLERS = tuple(
    re.compile(pattern)
    for pattern in ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")
)
HIGHR_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 7.5,
    10, 30, 60, float("inf"),
)  # fmt: skip
LOWR_BUCKETS = (0.1, 0.5, 1, float("inf"))


class HttpMetrics:
    """The instrumentator's five families, registered on one pod's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ("method", "status", "handler"),
            registry=registry,
        )
        self.request_size = Summary(
            "http_request_size_bytes",
            "Content length of incoming requests by handler. Only value of header is "
            "respected. Otherwise ignored. No percentile calculated. ",
            ("handler",),
            registry=registry,
        )
        self.response_size = Summary(
            "http_response_size_bytes",
            "Content length of outgoing responses by handler. Only value of header is "
            "respected. Otherwise ignored. No percentile calculated. ",
            ("handler",),
            registry=registry,
        )
        self.latency_highr = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more accurate "
            "percentile calculations. ",
            buckets=HIGHR_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. Made to be only used if aggregation by "
            "handler is important. ",
            ("method", "handler"),
            buckets=LOWR_BUCKETS,
            registry=registry,
        )

    def observe(
        self,
        method: str,
        status: int,
        handler: str,
        request_size: int,
        response_size: int,
        seconds: float,
    ) -> None:
        grouped = f"{str(status)[0]}xx"
        self.requests.labels(method, grouped, handler).inc()
        self.request_size.labels(handler).observe(request_size)
        self.response_size.labels(handler).observe(response_size)
        self.latency_highr.observe(seconds)
        self.latency.labels(method, handler).observe(seconds)


def _content_length(headers: Any) -> int:
    for key, value in headers:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class HttpMetricsMiddleware:
    """Observes each HTTP request once its response has been sent."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        response_headers: Any = ()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = message.get("headers", ())
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path, templated = _handler(scope)
            if not any(pattern.search(path) for pattern in EXCLUDED_HANDLERS):
                self.metrics.observe(
                    scope["method"],
                    status,
                    path if templated else "none",
                    _content_length(scope.get("headers", ())),
                    _content_length(response_headers),
                    max(time.perf_counter() - start, 0.0),
                )


def _handler(scope: Scope) -> tuple[str, bool]:
    """The matched route's path template, or the request path when no route fully matched
    (a wrong method matches only partly)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    methods = getattr(route, "methods", None)
    if isinstance(template, str) and (methods is None or scope["method"] in methods):
        return template, True
    return str(scope.get("path", "")), False
