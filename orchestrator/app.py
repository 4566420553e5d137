"""The orchestrator's app factory: it wires the gateway's parts, and its lifespan owns the
HTTP client, discovery, scraping, KV event subscriptions, the config reloader and, when
enabled, the gRPC server (on the same event loop, around the same router). The routes are
`tandem.orchestrator.api`'s."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from tandem.discovery.endpoints import EndpointSource, StaticEndpoints
from tandem.discovery.kubernetes import KubernetesEndpoints
from tandem.http.handlers import install_error_handlers
from tandem.orchestrator.admission import Admission
from tandem.orchestrator.api import api
from tandem.orchestrator.config import OrchestratorConfig, RebalanceConfig
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.gateway import Gateway
from tandem.orchestrator.grpc_server import GrpcServer, start_grpc_server
from tandem.orchestrator.kv_events import KVEventSubscriptions
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.reload import ConfigReloader
from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.config import EndpointPickerConfig, build_scheduler
from tandem.orchestrator.scheduling.scheduler import Scheduler
from tandem.orchestrator.scraper import MetricsScraper

_KEEPALIVE_CONNECTIONS = 512


def create_app(
    config: OrchestratorConfig,
    *,
    config_path: Path | None = None,
    config_dir: Path | None = None,
    source: EndpointSource | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The gateway app; its lifespan owns the HTTP client, discovery, scraping and the gRPC
    server (`config.grpc`), which it exposes as `app.state.grpc_server`.

    With `config_path` (the file `config` came from) scheduler changes to that file are
    applied while running; relative scheduler paths resolve against its folder, or
    `config_dir`."""
    if config_path is not None:
        config_dir = config_path.parent
    rng = random.Random(config.seed)

    def new_scheduler(scheduler_config: EndpointPickerConfig) -> Scheduler:
        return build_scheduler(scheduler_config, rng=rng, prefix_seed=config.model or "")

    parts = _Parts(
        config, new_scheduler(config.scheduler_config(config_dir)), new_scheduler,
        config_path, source, transport, clock,
    )  # fmt: skip
    app = FastAPI(title="tandem orchestrator", lifespan=lambda app: _lifespan(app, parts))
    install_error_handlers(app)
    app.include_router(api)
    return app


@dataclass(frozen=True, slots=True)
class _Parts:
    """What the factory decided; the lifespan builds the running gateway from it."""

    config: OrchestratorConfig
    scheduler: Scheduler
    new_scheduler: Callable[[EndpointPickerConfig], Scheduler]
    config_path: Path | None
    source: EndpointSource | None
    transport: httpx.AsyncBaseTransport | None
    clock: Callable[[], float]


@asynccontextmanager
async def _lifespan(app: FastAPI, parts: _Parts) -> AsyncIterator[None]:
    config = parts.config
    upstream_transport = parts.transport or httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=_KEEPALIVE_CONNECTIONS),
        verify=config.upstream_tls.verify(),
    )
    client = httpx.AsyncClient(
        transport=upstream_transport,
        timeout=httpx.Timeout(
            config.gateway.request_timeout_s, connect=config.gateway.connect_timeout_s
        ),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=_KEEPALIVE_CONNECTIONS),
    )
    gateway = _gateway(parts, client, upstream_transport)
    gateway.tasks.append(
        asyncio.create_task(discovery(config, parts.source).run(gateway.on_endpoints))
    )
    if parts.config_path is not None:
        gateway.tasks.append(
            asyncio.create_task(_reloader(parts, parts.config_path, gateway).run())
        )
    if config.rebalance is not None:
        gateway.tasks.append(asyncio.create_task(_rebalance(gateway.router, config.rebalance)))
    app.state.gateway = gateway
    grpc_server: GrpcServer | None = None
    try:
        if config.grpc.enabled:
            grpc_server = await start_grpc_server(gateway.router, config)
        app.state.grpc_server = grpc_server
        yield
    finally:
        if grpc_server is not None:
            await grpc_server.stop()
        for task in gateway.tasks:
            task.cancel()
        for task in gateway.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if gateway.scraper is not None:
            await gateway.scraper.stop()
        if gateway.kv_events is not None:
            await gateway.kv_events.stop()
        await client.aclose()


def _gateway(
    parts: _Parts, client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport
) -> Gateway:
    """The router, admission, scraper and KV event subscriptions around one client."""
    config, clock = parts.config, parts.clock
    router = Router(
        config=config,
        scheduler=parts.scheduler,
        store=EndpointStore(
            config.scrape.staleness_s,
            config.scrape.failures_before_unhealthy,
            breaker_config=config.circuit_breaker,
        ),
        metrics=GatewayMetrics(),
        clock=clock,
    )
    admission = Admission(router, config.admission, router.metrics, clock)
    gateway = Gateway(
        config=config, router=router, admission=admission, client=client, transport=transport
    )
    gateway.scraper = MetricsScraper(
        gateway.store,
        client,
        clock,
        interval_s=config.scrape.interval_s,
        timeout_s=config.scrape.timeout_s,
        on_scrape=router.on_scrape,
        scheme=config.upstream_tls.scheme,
    )
    gateway.kv_events = KVEventSubscriptions(
        lambda: router.scheduler.precise, router.metrics, clock
    )
    return gateway


async def _rebalance(router: Router, config: RebalanceConfig) -> None:
    """Look for a pod move between the pools every `check_s`; a move sets the pools'
    target split, which whoever runs the pods acts on (`tandem up` does)."""
    while True:
        await asyncio.sleep(config.check_s)
        router.rebalance()


def _reloader(parts: _Parts, path: Path, gateway: Gateway) -> ConfigReloader:
    """Applies scheduler changes in the config file while running."""

    def reload(changed: EndpointPickerConfig) -> None:
        gateway.router.replace_scheduler(parts.new_scheduler(changed))
        gateway.follow_kv_events()

    static = parts.source is None and parts.config.kubernetes is None
    return ConfigReloader(
        path,
        parts.config,
        reload,
        on_result=lambda result: gateway.metrics.config_reloads.labels(result).inc(),
        on_endpoints=gateway.on_endpoints if static else None,
    )


def discovery(config: OrchestratorConfig, source: EndpointSource | None) -> EndpointSource:
    """The given source, else Kubernetes when configured, else the static list."""
    if source is not None:
        return source
    if config.kubernetes is not None:
        return KubernetesEndpoints(config.kubernetes)
    return StaticEndpoints(e.endpoint() for e in config.endpoints)
