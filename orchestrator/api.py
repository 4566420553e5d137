"""The orchestrator's HTTP routes: the OpenAI API it serves (forwarded by the gateway),
health, readiness and metrics. The gateway they use is `app.state.gateway`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tandem.orchestrator.gateway import Gateway
from tandem.orchestrator.router import can_decode

api = APIRouter()


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def completions(request: Request) -> Response:
    return await gateway_of(request).forward(request, "completions")


async def chat_completions(request: Request) -> Response:
    return await gateway_of(request).forward(request, "chat")


# Plain Starlette routes: the hot path needs none of FastAPI's parameter handling.
api.add_route("/v1/completions", completions, methods=["POST"])
api.add_route("/v1/chat/completions", chat_completions, methods=["POST"])


@api.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return await gateway_of(request).list_models()


@api.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@api.get("/ready")
async def ready(request: Request) -> JSONResponse:
    gateway = gateway_of(request)
    views = gateway.store.views(gateway.clock())
    decoders = [v.name for v in views if can_decode(v)]
    known, healthy = gateway.store.counts(gateway.clock())
    body: dict[str, object] = {"ready": bool(decoders), "endpoints": known, "healthy": healthy}
    if not decoders:
        body["reason"] = "no healthy decode-capable endpoint"
    return JSONResponse(body, status_code=200 if decoders else 503)


@api.get("/metrics")
async def metrics(request: Request) -> Response:
    gateway = gateway_of(request)
    gateway.router.refresh_gauges()
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
