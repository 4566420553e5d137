"""`tandem sidecar`: the routing sidecar of a decode pod."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tandem.cli.common import (
    add_server_tls_arguments,
    configure_logging,
    options_from,
    serve,
    server_tls,
    split_list,
)
from tandem.errors import ConfigError, field_problems
from tandem.http.tracing import setup_tracing
from tandem.sidecar.config import SidecarConfig

if TYPE_CHECKING:
    from tandem.cli.common import Subparsers


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    host: str
    port: int
    vllm_host: str
    vllm_port: int
    prefill_endpoints: str
    prefill_selector: str | None
    prefill_port: int
    namespace: str | None
    kubeconfig: str | None
    prefill_timeout: float
    rewrite_cached_tokens: bool
    prefill_failure_policy: str
    kv_load_failure_policy: str
    no_kv_failure_retry: bool
    log_level: str
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_ca_certs: str | None
    ssl_cert_reqs: int
    prefill_tls: bool
    prefill_ca_certs: str | None
    prefill_certfile: str | None
    prefill_keyfile: str | None


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="run the routing sidecar of a decode pod (remote prefill, KV handoff, decode)",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--vllm-host", default="127.0.0.1")
    parser.add_argument("--vllm-port", type=int, default=8200)
    parser.add_argument(
        "--prefill-endpoints",
        default="",
        help="comma-separated host:port of the prefill pods this sidecar may use",
    )
    discovery = parser.add_argument_group("prefill discovery on Kubernetes (instead of a list)")
    discovery.add_argument(
        "--prefill-selector",
        help="label selector of the prefill pods, e.g. llm-d.ai/role=prefill,llm-d.ai/model=x",
    )
    discovery.add_argument("--prefill-port", type=int, default=8000, help="their serving port")
    discovery.add_argument("--namespace", help="their namespace (default: this pod's)")
    discovery.add_argument("--kubeconfig", help="default: the in-cluster service account")
    parser.add_argument("--prefill-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument(
        "--rewrite-cached-tokens",
        action="store_true",
        help="report the prefill side's cached tokens (for vLLM releases that do not)",
    )
    parser.add_argument(
        "--prefill-failure-policy",
        choices=("local", "next-candidate", "fail"),
        default="local",
        help="when prefill pods fail: try the next, then prefill here (local, the default); "
        "try the next, then fail (next-candidate); fail at once (fail)",
    )
    parser.add_argument(
        "--kv-load-failure-policy",
        choices=("recompute", "fail"),
        default="recompute",
        help="when the local vLLM's KV load fails before the first token: prefill here once "
        "(recompute, the default) or relay vLLM's error (fail)",
    )
    parser.add_argument(
        "--no-kv-failure-retry",
        action="store_true",
        help="the same as --kv-load-failure-policy fail",
    )
    parser.add_argument("--log-level", default="info")
    add_server_tls_arguments(parser)
    prefill_tls = parser.add_argument_group("TLS to the prefill pods")
    prefill_tls.add_argument(
        "--prefill-tls", action="store_true", help="call the prefill pods over TLS"
    )
    prefill_tls.add_argument("--prefill-ca-certs", help="the CA of their certificates (PEM)")
    prefill_tls.add_argument("--prefill-certfile", help="this sidecar's certificate (mTLS)")
    prefill_tls.add_argument("--prefill-keyfile", help="and its private key")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = options_from(SidecarOptions, args)
    configure_logging(options.log_level)
    setup_tracing("tandem-sidecar")
    from tandem.sidecar.app import create_app

    config = sidecar_config(options)
    return serve(create_app(config), config.host, config.port, options.log_level, config.tls)


def sidecar_config(options: SidecarOptions) -> SidecarConfig:
    """The sidecar's settings from its command line; a `ConfigError` says what is wrong with
    them."""
    discovery = None
    if options.prefill_selector:
        discovery = {
            "selector": options.prefill_selector,
            "namespace": options.namespace,
            "port": options.prefill_port,
            "kubeconfig": options.kubeconfig,
        }
    kv_policy = "fail" if options.no_kv_failure_retry else options.kv_load_failure_policy
    prefill_tls = options.prefill_tls or any(
        value is not None for value in (options.prefill_ca_certs, options.prefill_certfile)
    )
    document = {
        "host": options.host,
        "port": options.port,
        "vllm_host": options.vllm_host,
        "vllm_port": options.vllm_port,
        "prefill_endpoints": split_list(options.prefill_endpoints),
        "prefill_discovery": discovery,
        "prefill_timeout_s": options.prefill_timeout,
        "rewrite_cached_tokens": options.rewrite_cached_tokens,
        "prefill_failure_policy": options.prefill_failure_policy,
        "kv_load_failure_policy": kv_policy,
        "tls": server_tls(
            options.ssl_certfile, options.ssl_keyfile, options.ssl_ca_certs, options.ssl_cert_reqs
        ),
        "prefill_tls": {
            "enabled": prefill_tls,
            "ca_file": options.prefill_ca_certs,
            "cert_file": options.prefill_certfile,
            "key_file": options.prefill_keyfile,
        },
    }
    try:
        return SidecarConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"sidecar options: {field_problems(exc.errors())}") from None
