"""Fake model servers for gateway and sidecar tests: they record what reaches them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

VLLM_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 0.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} %s
"""


@dataclass
class Recorder:
    """What a fake server saw, and how it should answer."""

    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    delay_s: float = 0.0
    kv_usage: float = 0.0
    """What its /metrics says of its KV cache use (0..1)."""

    async def record(self, request: Request) -> dict[str, Any]:
        """Keep the request's headers (lower case) and JSON body; return the body."""
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        body: dict[str, Any] = await request.json()
        self.bodies.append(body)
        return body


def fake_model_server(kv_usage: float = 0.0) -> FastAPI:
    """An app that answers /metrics with the vLLM samples a scraper needs."""
    app = FastAPI()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(VLLM_METRICS % kv_usage, media_type="text/plain")

    return app


def recording_server(recorder: Recorder) -> FastAPI:
    """Answers completions with a fixed body after `delay_s`, recording headers and bodies."""
    app = fake_model_server(recorder.kv_usage)

    @app.post("/v1/completions")
    @app.post("/v1/chat/completions")
    async def completion(request: Request) -> JSONResponse:
        await recorder.record(request)
        if recorder.delay_s:
            await asyncio.sleep(recorder.delay_s)
        body: dict[str, Any] = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "choices": [],
            "usage": None,
        }
        return JSONResponse(body, status_code=recorder.status)

    return app
