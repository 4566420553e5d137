"""Traces across the hops: W3C `traceparent` carried gateway → sidecar → prefill pod and
sidecar → local vLLM, and spans of the gateway and the sidecar with each stage's timing as
attributes (OpenTelemetry).

Export is off by default: spans are recorded only once a tracer provider is installed, which
`setup_tracing` does when the standard OpenTelemetry variables ask for OTLP
(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`; `OTEL_SERVICE_NAME`,
`OTEL_TRACES_SAMPLER` and the other `OTEL_*` settings apply as the SDK reads them). Without
one, tandem still passes on the `traceparent` it received, so traces that vLLM (started with
`--otlp-traces-endpoint`) or a gateway in front records stay whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer

__all__ = [
    "Span",
    "SpanKind",
    "current_span",
    "extract",
    "inject",
    "setup_tracing",
    "tracer",
]

OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracer() -> Tracer:
    return trace.get_tracer("tandem")


def current_span() -> Span:
    """The span of the request being handled (a no-op span when nothing records)."""
    return trace.get_current_span()


def extract(headers: Mapping[str, str]) -> Context:
    """The trace context a request arrived with (none: a new trace starts here)."""
    return propagate.extract(headers)


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current span's `traceparent` (and `tracestate`) into outgoing headers,
    replacing what the client sent."""
    propagate.inject(headers)


def setup_tracing(service: str) -> bool:
    """Export spans over OTLP/HTTP (JSON) when the environment names a collector; returns whether
    it does. `service` is the default `service.name` (`OTEL_SERVICE_NAME` overrides it)."""
    environ = os.environ
    if not any(environ.get(name) for name in OTLP_ENDPOINT_VARIABLES):
        return False
    # OTLP/HTTP in its JSON encoding: the protobuf one's `opentelemetry.proto` modules are
    # also shipped, older, by xds-protos (Envoy's ext_proc), and the two would collide.
    from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True
