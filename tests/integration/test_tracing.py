"""One request, one trace: the gateway, the sidecar, its prefill leg and its decode leg, each
hop carrying the W3C trace context and its stage's timing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tests.integration.test_gateway import _healthy as healthy
from tests.integration.test_gateway import gateway
from tests.support.pd import MODEL, pd_stack, words
from tests.support.servers import free_port, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
NAMES = {"tandem.gateway", "tandem.sidecar", "tandem.sidecar.prefill", "tandem.sidecar.decode"}


class _Recorder(SpanExporter):
    """Keeps the spans ended while a test records; nothing otherwise."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.recording = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.recording:
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.fixture(scope="module")
def recorder() -> Iterator[_Recorder]:
    exporter = _Recorder()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the first test module to trace installs it
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.recording = False


def test_a_disaggregated_request_is_one_trace_across_every_hop(recorder: _Recorder) -> None:
    with pd_stack() as pd:
        sidecar_port = int(pd.sidecar_url.rsplit(":", 1)[1])
        endpoints = [
            {"name": "prefill-0", "host": "127.0.0.1", "port": pd.prefill.port, "role": "prefill"},
            {"name": "decode-0", "host": "127.0.0.1", "port": sidecar_port, "role": "decode"},
        ]
        with gateway(endpoints, scheduler="round-robin") as url:  # always disaggregates
            assert wait_until(lambda: healthy(url) == 2)
            recorder.recording = True
            reply = httpx.post(
                f"{url}/v1/completions",
                json={"model": MODEL, "prompt": words(300), "max_tokens": 4},
                headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
                timeout=30,
            )
            assert wait_until(lambda: len({s.name for s in recorder.spans} & NAMES) == 4)
            recorder.recording = False

    assert reply.status_code == 200
    # The pods' own server spans (FastAPI's) join the same trace; tandem's are these four.
    # (Scrapes meanwhile start traces of their own.)
    ours = [s for s in recorder.spans if format(s.context.trace_id, "032x") == TRACE_ID]
    assert any(not s.name.startswith("tandem.") for s in ours)
    assert all(s in ours for s in recorder.spans if s.name.startswith("tandem."))
    spans = {span.name: span for span in ours if span.name.startswith("tandem.")}
    assert set(spans) == {
        "tandem.gateway", "tandem.sidecar", "tandem.sidecar.prefill", "tandem.sidecar.decode",
    }  # fmt: skip
    gateway_span, sidecar_span = spans["tandem.gateway"], spans["tandem.sidecar"]
    # Each hop's parent is the hop before it, over HTTP headers.
    assert gateway_span.parent is not None
    assert gateway_span.parent.is_remote
    assert format(gateway_span.parent.span_id, "016x") == CLIENT_SPAN
    assert sidecar_span.parent is not None
    assert sidecar_span.parent.is_remote
    assert sidecar_span.parent.span_id == gateway_span.context.span_id
    for leg in ("tandem.sidecar.prefill", "tandem.sidecar.decode"):
        parent = spans[leg].parent
        assert parent is not None
        assert parent.span_id == sidecar_span.context.span_id
    attributes = gateway_span.attributes or {}
    assert attributes["tandem.decision"] == "disaggregate"
    assert (attributes["tandem.decode"], attributes["tandem.prefill"]) == ("decode-0", "prefill-0")
    assert attributes["http.response.status_code"] == 200
    assert isinstance(attributes["tandem.placement_ms"], float)
    assert (sidecar_span.attributes or {})["tandem.mode"] == "disaggregated"
    prefill = spans["tandem.sidecar.prefill"].attributes or {}
    assert prefill["tandem.prefill_target"] == pd.prefill_address
    prefill_ms = prefill["tandem.prefill_ms"]
    assert isinstance(prefill_ms, float)
    assert prefill_ms > 0
    decode = spans["tandem.sidecar.decode"].attributes or {}
    assert decode["tandem.kv_from"] == pd.prefill_address


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Collector.received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_spans_are_exported_over_otlp_when_a_collector_is_configured(tmp_path: Path) -> None:
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = (
        "from tandem.http.tracing import setup_tracing, tracer\n"
        "assert setup_tracing('tandem-test')\n"
        "with tracer().start_as_current_span('tandem.gateway'):\n"
        "    pass\n"
    )
    environ = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    try:
        subprocess.run([sys.executable, "-c", code], env=environ, check=True, timeout=60)
    finally:
        server.shutdown()

    assert [path for path, _ in _Collector.received] == ["/v1/traces"]
    assert b"tandem.gateway" in _Collector.received[0][1]
    assert b"tandem-test" in _Collector.received[0][1]


def test_without_a_collector_nothing_is_set_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from tandem.http.tracing import setup_tracing

    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)

    assert setup_tracing("tandem-test") is False
