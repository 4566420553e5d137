"""What the subcommands share: their parsers' type, logging, serving an app, typed options
from parsed arguments, the arguments every workload command takes, and the tools' imports."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from tandem.errors import ToolsMissingError, UsageError
from tandem.http.tls import ServerTLS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_Options = TypeVar("_Options", bound="DataclassInstance")


TOOL_LIBRARIES = ("rich", "matplotlib", "numpy", "hypothesis")
"""What the `tools` extra installs, which the serving install (and its image) leaves out."""
TOOL_PACKAGES = ("tandem.bench", "tandem.planner")
"""The tools themselves, which the serving image leaves out too."""


@contextmanager
def tools_installed(command: str) -> Iterator[None]:
    """Around a tool command's imports: without the `tools` extra, a usage error that says
    how to install it instead of an ImportError."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing.split(".")[0] not in TOOL_LIBRARIES and not missing.startswith(TOOL_PACKAGES):
            raise
        raise ToolsMissingError(
            f"tandem {command} is one of the tools, and {missing} is not installed: "
            "pip install 'tandem[tools]'"
        ) from None


def options_from(cls: type[_Options], args: argparse.Namespace) -> _Options:
    """A command's typed options from its parsed arguments (the only place a command reads
    the untyped `Namespace`; a field without an argument of its name is a bug caught here)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise


def serve(app: Any, host: str, port: int, log_level: str, tls: ServerTLS | None = None) -> int:
    """Serve an ASGI app until SIGINT/SIGTERM (uvicorn shuts down gracefully); over TLS with
    `tls`."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=30,
        **(tls.uvicorn_options() if tls is not None else {}),
    )
    return 0


def add_server_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """vLLM's own flags for serving TLS (`vllm serve --ssl-*`)."""
    tls = parser.add_argument_group("TLS (vLLM's flags)")
    tls.add_argument("--ssl-certfile", help="serve TLS with this certificate (PEM)")
    tls.add_argument("--ssl-keyfile", help="and this private key")
    tls.add_argument("--ssl-ca-certs", help="the CA that signs the callers' certificates")
    tls.add_argument(
        "--ssl-cert-reqs",
        type=int,
        default=0,
        help="2: callers must present a certificate signed by --ssl-ca-certs (mutual TLS)",
    )


def server_tls(
    certfile: str | None, keyfile: str | None, ca_certs: str | None, cert_reqs: int
) -> ServerTLS | None:
    """The `--ssl-*` flags as a server's TLS settings; None serves plain HTTP."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise UsageError("--ssl-certfile and --ssl-keyfile go together")
    if cert_reqs == ssl.CERT_REQUIRED and ca_certs is None:
        raise UsageError("--ssl-cert-reqs 2 needs --ssl-ca-certs")
    client_ca = ca_certs if cert_reqs == ssl.CERT_REQUIRED else None
    return ServerTLS(cert_file=certfile, key_file=keyfile, client_ca_file=client_ca)


def add_workload_arguments(
    parser: argparse.ArgumentParser, *, policies_help: str, quick_help: str, output: str
) -> None:
    """The workload, its policies and clusters, the quick ladder and the output folder, as
    `tandem bench` and `tandem plan` both take them."""
    parser.add_argument("workload", help="a workload file, or a shipped workload's name")
    parser.add_argument("--policies", default="tandem,round-robin", help=policies_help)
    parser.add_argument(
        "--clusters", help="comma-separated cluster names from the workload (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--output", default=output, help="folder for the results")


def split_list(value: str | None) -> tuple[str, ...]:
    """A comma-separated argument's items, empty ones left out."""
    return tuple(item for item in (value or "").split(",") if item.strip())
