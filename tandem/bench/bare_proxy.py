"""The cheapest possible httpx reverse proxy, as a floor for the gateway's added latency.

Started by `tandem microbench gateway` next to the real gateway: whatever the gateway adds
beyond this proxy is tandem's own cost (scheduling, accounting, streaming, cancellation).
Run as `uvicorn bench.bare_proxy:app` with TANDEM_BARE_PROXY_UPSTREAM=http://host:port.
"""

from __future__ import annotations

import os

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_UPSTREAM = os.environ.get("TANDEM_BARE_PROXY_UPSTREAM", "http://127.0.0.1:8000")
_client = httpx.AsyncClient(base_url=_UPSTREAM)


async def _forward(request: Request) -> Response:
    reply = await _client.post(
        request.url.path,
        content=await request.body(),
        headers={"content-type": "application/json"},
    )
    return Response(reply.content, status_code=reply.status_code, media_type="application/json")


app = Starlette(routes=[Route("/v1/completions", _forward, methods=["POST"])])
