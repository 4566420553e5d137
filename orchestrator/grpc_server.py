"""The orchestrator's gRPC server: its gRPC faces and the standard health service.

One `grpc.aio.Server` runs on the HTTP gateway's event loop, so every servicer calls the
shared `Router` from the thread the gateway's routes use (the router is not thread-safe).
Each face is one entry of `SERVICES`: its service name and the function that adds its
servicer. The `grpc.health.v1.Health` service reports the server ("") and each face SERVING
once the server listens, and NOT_SERVING from the moment shutdown begins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from tandem.logs import EventLog
from tandem.orchestrator import ext_proc, pick_service
from tandem.orchestrator.config import OrchestratorConfig
from tandem.orchestrator.router import Router

logger = EventLog(__name__)


@dataclass(frozen=True, slots=True)
class GrpcService:
    """One gRPC face of the orchestrator."""

    name: str
    """Its full service name, as health checks ask for it."""
    add: Callable[[grpc.aio.Server, Router, OrchestratorConfig], None]
    """Adds its servicer to a server, driving the given router."""


SERVICES: tuple[GrpcService, ...] = (
    GrpcService(pick_service.SERVICE_NAME, pick_service.add_to_server),
    GrpcService(ext_proc.SERVICE_NAME, ext_proc.add_ext_proc_servicer),
)

SHUTDOWN_GRACE_S = 25.0
"""How long calls in progress may finish once shutdown begins. A pick takes milliseconds,
but an ext_proc stream lasts as long as its HTTP request, and cutting it fails that request
in Envoy; 25 s fits in Kubernetes' default 30 s termination grace period."""


@dataclass(frozen=True, slots=True)
class GrpcServer:
    """A started server, what it serves and where."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    services: tuple[str, ...]
    port: int
    """The bound port (the configured one, or the one the system chose for port 0)."""

    async def stop(self) -> None:
        """Report NOT_SERVING, let calls in progress finish, then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(SHUTDOWN_GRACE_S)
        logger.info("grpc_stopped", port=self.port)


def add_services(
    server: grpc.aio.Server,
    router: Router,
    config: OrchestratorConfig,
    services: Sequence[GrpcService] = SERVICES,
) -> health_aio.HealthServicer:
    """Add the health service and every face; returns the health servicer."""
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in services:
        service.add(server, router, config)
    return health


async def start_grpc_server(
    router: Router,
    config: OrchestratorConfig,
    services: Sequence[GrpcService] = SERVICES,
) -> GrpcServer:
    """Listen on `config.grpc.host:port` on the running event loop; raises OSError naming
    the address when it cannot."""
    # gRPC sets SO_REUSEPORT by default, so a second orchestrator on the same port would
    # silently share its connections; bind exclusively, as the HTTP gateway does.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health = add_services(server, router, config, services)
    names = tuple(service.name for service in services)
    host = f"[{config.grpc.host}]" if ":" in config.grpc.host else config.grpc.host
    address = f"{host}:{config.grpc.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"grpc: cannot listen on {address} (is the port taken?): {exc}") from None
    await server.start()
    for name in ("", *names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("grpc_serving", address=f"{host}:{port}", services=",".join(names))
    return GrpcServer(server, health, names, port)
