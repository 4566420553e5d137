"""The orchestrator's HTTP app: routes, and the lifespan that owns client, discovery, scraping
and, when enabled, the gRPC server (on the same event loop, around the same router)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mesh.discovery import KubernetesEndpoints
from mesh.endpoints import EndpointSource, StaticEndpoints
from mesh.http import install_error_handlers
from orchestrator.admission import Admission
from orchestrator.config import OrchestratorConfig
from orchestrator.endpoints import EndpointStore
from orchestrator.gateway import Gateway
from orchestrator.grpc_server import GrpcServer, start_grpc_server
from orchestrator.kv_events import KVEventSubscriptions
from orchestrator.metrics import GatewayMetrics
from orchestrator.reload import ConfigReloader
from orchestrator.router import Router, can_decode
from orchestrator.scheduling.config import EndpointPickerConfig, build_scheduler
from orchestrator.scheduling.scheduler import Scheduler
from orchestrator.scraper import MetricsScraper


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

    scheduler = new_scheduler(config.scheduler_config(config_dir))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway_config = config.gateway
        upstream_transport = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512)
        )
        client = httpx.AsyncClient(
            transport=upstream_transport,
            timeout=httpx.Timeout(
                gateway_config.request_timeout_s, connect=gateway_config.connect_timeout_s
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
        )
        router = Router(
            config=config,
            scheduler=scheduler,
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
            config=config,
            router=router,
            admission=admission,
            client=client,
            transport=upstream_transport,
        )
        gateway.scraper = MetricsScraper(
            gateway.store, client, clock,
            interval_s=config.scrape.interval_s, timeout_s=config.scrape.timeout_s,
            on_scrape=router.on_scrape,
        )  # fmt: skip
        gateway.kv_events = KVEventSubscriptions(
            lambda: router.scheduler.precise, router.metrics, clock
        )
        gateway.tasks.append(
            asyncio.create_task(discovery(config, source).run(gateway.on_endpoints))
        )
        if config_path is not None:

            def reload(changed: EndpointPickerConfig) -> None:
                router.replace_scheduler(new_scheduler(changed))
                gateway.follow_kv_events()

            reloader = ConfigReloader(
                config_path, config, reload,
                on_result=lambda result: gateway.metrics.config_reloads.labels(result).inc(),
            )  # fmt: skip
            gateway.tasks.append(asyncio.create_task(reloader.run()))
        app.state.gateway = gateway
        grpc_server: GrpcServer | None = None
        try:
            if config.grpc.enabled:
                grpc_server = await start_grpc_server(router, config)
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
            await gateway.scraper.stop()
            await gateway.kv_events.stop()
            await client.aclose()

    app = FastAPI(title="tandem orchestrator", lifespan=lifespan)
    install_error_handlers(app)

    def gateway_of(request: Request) -> Gateway:
        gateway: Gateway = request.app.state.gateway
        return gateway

    async def completions(request: Request) -> Response:
        return await gateway_of(request).forward(request, "completions")

    async def chat_completions(request: Request) -> Response:
        return await gateway_of(request).forward(request, "chat")

    # Plain Starlette routes: the hot path needs none of FastAPI's parameter handling.
    app.router.add_route("/v1/completions", completions, methods=["POST"])
    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        return await gateway_of(request).list_models()

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        gateway = gateway_of(request)
        views = gateway.store.views(gateway.clock())
        decoders = [v.name for v in views if can_decode(v)]
        known, healthy = gateway.store.counts(gateway.clock())
        body: dict[str, object] = {"ready": bool(decoders), "endpoints": known, "healthy": healthy}
        if not decoders:
            body["reason"] = "no healthy decode-capable endpoint"
        return JSONResponse(body, status_code=200 if decoders else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        gateway = gateway_of(request)
        gateway.router.refresh_gauges()
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def discovery(config: OrchestratorConfig, source: EndpointSource | None) -> EndpointSource:
    """The given source, else Kubernetes when configured, else the static list."""
    if source is not None:
        return source
    if config.kubernetes is not None:
        return KubernetesEndpoints(config.kubernetes)
    return StaticEndpoints(e.endpoint() for e in config.endpoints)
