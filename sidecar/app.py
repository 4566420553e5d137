"""The routing sidecar's app factory: the lifespan owns the two pooled HTTP clients and the
discovery that feeds the prefill allowlist; every route goes to the `Sidecar`
(`tandem.sidecar.service`): inference requests through the P/D flow, the rest to the local vLLM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request, Response

from tandem.discovery.endpoints import EndpointSource
from tandem.discovery.kubernetes import KubernetesEndpoints
from tandem.http.handlers import install_error_handlers
from tandem.logs import EventLog
from tandem.sidecar.allowlist import (
    DiscoveredAllowlist,
    HostPort,
    PrefillAllowlist,
    StaticAllowlist,
)
from tandem.sidecar.config import SidecarConfig
from tandem.sidecar.metrics import SidecarMetrics
from tandem.sidecar.service import INFERENCE_PATHS, Sidecar

logger = EventLog(__name__)

_KEEPALIVE_CONNECTIONS = 256


def create_app(
    config: SidecarConfig,
    *,
    allowlist: PrefillAllowlist | None = None,
    source: EndpointSource | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The sidecar app; its lifespan owns the two pooled HTTP clients and, with
    `config.prefill_discovery` (or a `source`), the discovery that feeds the allowlist."""
    discovered: DiscoveredAllowlist | None = None
    if source is None and config.prefill_discovery is not None:
        source = KubernetesEndpoints(config.prefill_discovery)
    if allowlist is not None:
        allowed: PrefillAllowlist = allowlist
    elif source is not None:
        allowed = discovered = DiscoveredAllowlist()
    else:
        allowed = StaticAllowlist(_iter_targets(config.prefill_endpoints))
    feed = _Discovery(source, discovered) if source is not None and discovered is not None else None
    app = FastAPI(
        title="tandem sidecar",
        lifespan=lambda app: _lifespan(app, config, allowed, feed, transport),
    )
    install_error_handlers(app)
    for path in INFERENCE_PATHS:
        app.router.add_route(path, _inference, methods=["POST"])
    app.router.add_route(
        "/{path:path}", _passthrough, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]
    )
    return app


@dataclass(frozen=True, slots=True)
class _Discovery:
    """Where the allowlist's prefill endpoints come from, and the allowlist they update."""

    source: EndpointSource
    allowlist: DiscoveredAllowlist


@asynccontextmanager
async def _lifespan(
    app: FastAPI,
    config: SidecarConfig,
    allowlist: PrefillAllowlist,
    feed: _Discovery | None,
    transport: httpx.AsyncBaseTransport | None,
) -> AsyncIterator[None]:
    limits = httpx.Limits(
        max_connections=None,
        max_keepalive_connections=_KEEPALIVE_CONNECTIONS,
        keepalive_expiry=config.keepalive_expiry_s,
    )
    vllm_transport = transport or httpx.AsyncHTTPTransport(limits=limits)
    vllm = httpx.AsyncClient(
        base_url=f"http://{config.vllm_host}:{config.vllm_port}",
        timeout=httpx.Timeout(config.decode_timeout_s, connect=config.connect_timeout_s),
        transport=vllm_transport,
    )
    prefill = httpx.AsyncClient(
        timeout=httpx.Timeout(config.prefill_timeout_s, connect=config.connect_timeout_s),
        limits=limits,
        transport=transport,
        verify=config.prefill_tls.verify(),
    )
    app.state.sidecar = Sidecar(config, allowlist, vllm, vllm_transport, prefill, SidecarMetrics())
    discovery = (
        asyncio.create_task(feed.source.run(feed.allowlist.update)) if feed is not None else None
    )
    logger.info(
        "sidecar_started",
        port=config.port,
        vllm=f"{config.vllm_host}:{config.vllm_port}",
        prefill_allowlist="discovered" if discovery else len(config.prefill_endpoints),
    )
    try:
        yield
    finally:
        if discovery is not None:
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
        await vllm.aclose()
        await prefill.aclose()


def _sidecar(request: Request) -> Sidecar:
    sidecar: Sidecar = request.app.state.sidecar
    return sidecar


async def _inference(request: Request) -> Response:
    return await _sidecar(request).inference(request)


async def _passthrough(request: Request) -> Response:
    return await _sidecar(request).passthrough(request)


def _iter_targets(values: tuple[str, ...]) -> Iterator[HostPort]:
    for value in values:
        yield HostPort.parse(value)
