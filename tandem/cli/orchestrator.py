"""`tandem orchestrator`: the OpenAI-compatible gateway with the two-pass scheduler."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.cli.common import configure_logging, options_from, serve
from tandem.http.tracing import setup_tracing

if TYPE_CHECKING:
    from tandem.cli.common import Subparsers


@dataclass(frozen=True, slots=True)
class OrchestratorOptions:
    config: str
    host: str | None
    port: int | None
    grpc_port: int | None
    log_level: str


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "orchestrator",
        help="run the gateway and scheduler in front of prefill and decode pools",
        description="Run tandem's OpenAI-compatible gateway with the two-pass scheduler.",
    )
    parser.add_argument("--config", required=True, help="orchestrator YAML file")
    parser.add_argument("--host", help="listen address (overrides gateway.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides gateway.port)")
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="serve gRPC (Pick API, Envoy ext_proc endpoint picker, health) on this port, "
        "on grpc.host (enables grpc; overrides grpc.port)",
    )
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = options_from(OrchestratorOptions, args)
    configure_logging(options.log_level)
    setup_tracing("tandem-orchestrator")
    from tandem.errors import OrchestratorConfigError
    from tandem.orchestrator.app import create_app
    from tandem.orchestrator.config import GrpcConfig, load_orchestrator_config

    try:
        config = load_orchestrator_config(options.config)
        listen = (("host", options.host), ("port", options.port))
        gateway = config.gateway.model_copy(update={k: v for k, v in listen if v is not None})
        config = config.model_copy(update={"gateway": gateway})
        if options.grpc_port is not None:
            grpc = {**config.grpc.model_dump(), "enabled": True, "port": options.grpc_port}
            config = config.model_copy(update={"grpc": GrpcConfig.model_validate(grpc)})
        app = create_app(config, config_path=Path(options.config).resolve())
    except OrchestratorConfigError as exc:
        message = f"invalid orchestrator config {options.config}: {exc}"
        raise OrchestratorConfigError(message) from None
    return serve(app, config.gateway.host, config.gateway.port, options.log_level)
