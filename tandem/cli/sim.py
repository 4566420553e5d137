"""`tandem sim`: one simulated vLLM pod, or the real `vllm serve` command line it stands for."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tandem.cli.common import (
    add_server_tls_arguments,
    configure_logging,
    options_from,
    serve,
    server_tls,
)
from tandem.cluster.topology import POOLS
from tandem.costmodel.profiles import PROFILES
from tandem.errors import ConfigError, field_problems
from tandem.pods.launch import PoolRole, VllmLaunch
from tandem.simulator.config import SimPodConfig, simulated_pod

if TYPE_CHECKING:
    from tandem.cli.common import Subparsers


@dataclass(frozen=True, slots=True)
class SimOptions:
    role: PoolRole
    profile: str
    served_model_name: str | None
    host: str | None
    port: int | None
    side_channel_port: int | None
    engine_id: str | None
    time_scale: float
    num_gpu_blocks: int | None
    max_model_len: int | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    kv_lease_duration: int | None
    kv_load_failure_policy: str | None
    kv_drain_timeout: float | None
    natural_output_len: int | None
    tokenizer: str | None
    kv_events_config: str | None
    enable_request_id_headers: bool
    fault_error_rate: float
    fault_error_codes: str
    fault_latency: float
    fault_hang_rate: float
    fault_crash_after: int | None
    fault_ready_delay: float
    print_vllm_command: bool
    log_level: str
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_ca_certs: str | None
    ssl_cert_reqs: int


def add_parser(subparsers: Subparsers) -> None:
    sim = subparsers.add_parser(
        "sim",
        help="run one simulated vLLM pod (no GPU), or print the real vLLM command line",
        description="Run one simulated vLLM pod that speaks vLLM's HTTP and P/D protocol.",
    )
    sim.add_argument("--role", choices=("prefill", "decode", "both"), default="both")
    sim.add_argument("--profile", choices=sorted(PROFILES), default="llama-3.1-8b-h100-tp1")
    sim.add_argument("--served-model-name", help="model name clients use (default: the model)")
    sim.add_argument("--host", help="listen address (default 127.0.0.1)")
    sim.add_argument("--port", type=int, help="HTTP port (default: the role's vLLM port)")
    sim.add_argument("--side-channel-port", type=int, help="KV side-channel port (default 5600)")
    sim.add_argument("--engine-id", help="engine id advertised to decoders (default: random)")
    sim.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="wall seconds per model second; >1 imitates fast hardware on a slow machine",
    )
    sim.add_argument("--num-gpu-blocks", type=int, help="KV capacity in blocks")
    sim.add_argument("--max-model-len", type=int)
    sim.add_argument("--max-num-seqs", type=int)
    sim.add_argument("--max-num-batched-tokens", type=int)
    sim.add_argument("--kv-lease-duration", type=int)
    sim.add_argument("--kv-load-failure-policy", choices=("fail", "recompute"))
    sim.add_argument(
        "--kv-drain-timeout",
        type=float,
        help="on SIGTERM, once the requests in flight are answered, how long to keep serving "
        "decoders' reads of the KV blocks still held for them (model seconds, like the lease; "
        "default: the lease)",
    )
    sim.add_argument("--natural-output-len", type=int)
    sim.add_argument("--tokenizer", help="path to a Hugging Face tokenizer.json")
    sim.add_argument(
        "--kv-events-config",
        help="vLLM's KV event publisher settings as JSON (default: none, as vLLM's), e.g. "
        '\'{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557"}\'; a wildcard endpoint '
        "binds the address the pod serves on (--host)",
    )
    sim.add_argument(
        "--enable-request-id-headers",
        action="store_true",
        help="echo X-Request-Id on every response, as vLLM's flag of the same name",
    )
    faults = sim.add_argument_group(
        "failure injection",
        "tandem's own faults, for testing what sits in front of a pod; vLLM has no such "
        "options, and injected errors (e.g. 429) are statuses vLLM itself never returns",
    )
    faults.add_argument("--fault-error-rate", type=float, default=0.0)
    faults.add_argument("--fault-error-codes", default="503", help="comma-separated statuses")
    faults.add_argument("--fault-latency", type=float, default=0.0, help="added seconds")
    faults.add_argument("--fault-hang-rate", type=float, default=0.0)
    faults.add_argument("--fault-crash-after", type=int)
    faults.add_argument("--fault-ready-delay", type=float, default=0.0, help="seconds")
    sim.add_argument(
        "--print-vllm-command",
        action="store_true",
        help="print the real `vllm serve` command line for this pod and exit",
    )
    sim.add_argument("--log-level", default="info")
    add_server_tls_arguments(sim)
    sim.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = options_from(SimOptions, args)
    configure_logging(options.log_level)
    launch, config = sim_config(options)
    if options.print_vllm_command:
        print(launch.shell_command())
        return 0
    from tandem.simulator.server import create_app

    with _sigterm_ends_in_success():
        return serve(create_app(config), config.host, config.port, options.log_level, launch.tls)


@contextmanager
def _sigterm_ends_in_success() -> Iterator[None]:
    """Exit 0 once SIGTERM has stopped the pod gracefully (requests answered, held KV read), as
    a stop that was asked for. uvicorn handles the signal, then raises it again for the handler
    installed before it (uvicorn/server.py, `capture_signals`): this one, which ends the process
    with status 0 (at once, when the signal comes before uvicorn has started)."""
    previous = signal.signal(signal.SIGTERM, _exit_with_success)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_with_success(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def sim_config(options: SimOptions) -> tuple[VllmLaunch, SimPodConfig]:
    """The pod definition for the role, and its simulated config, both with the CLI's
    overrides (so `--print-vllm-command` prints the server the simulated pod stands for)."""
    host = options.host or "127.0.0.1"
    # As vLLM does, the side channel binds to and advertises VLLM_NIXL_SIDE_CHANNEL_HOST (on
    # Kubernetes the pod IP), "localhost" without it (vllm-project/vllm: vllm/envs.py).
    side_channel_host = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST") or "localhost"
    # As `vllm serve`, no KV events unless --kv-events-config asks for them.
    launch = dataclasses.replace(
        POOLS[options.role].pod(options.profile, served_model_name=options.served_model_name).vllm,
        side_channel_host=side_channel_host,
        kv_events_port=None,
        kv_events_replay_port=None,
    )
    base = simulated_pod(launch, host=host, time_scale=options.time_scale).model_dump()
    overrides = {
        "port": options.port,
        "side_channel_port": options.side_channel_port,
        "engine_id": options.engine_id,
        "num_gpu_blocks": options.num_gpu_blocks,
        "max_model_len": options.max_model_len,
        "max_num_seqs": options.max_num_seqs,
        "max_num_batched_tokens": options.max_num_batched_tokens,
        "kv_lease_duration": options.kv_lease_duration,
        "kv_load_failure_policy": options.kv_load_failure_policy,
        "kv_drain_timeout": options.kv_drain_timeout,
        "natural_output_len": options.natural_output_len,
        "tokenizer": options.tokenizer,
        "enable_request_id_headers": options.enable_request_id_headers or None,
        "kv_events_config": _json_option("--kv-events-config", options.kv_events_config),
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["faults"] = {
        "error_rate": options.fault_error_rate,
        "error_codes": [code for code in options.fault_error_codes.split(",") if code],
        "added_latency_s": options.fault_latency,
        "hang_rate": options.fault_hang_rate,
        "crash_after": options.fault_crash_after,
        "ready_delay_s": options.fault_ready_delay,
    }
    try:
        config = SimPodConfig.model_validate(base)
    except ValidationError as exc:
        raise ConfigError(f"pod options: {field_problems(exc.errors())}") from None
    return _with_overrides(launch, config, options), config


def _json_option(flag: str, value: str | None) -> object:
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not JSON ({exc}): {value}") from None


def _with_overrides(launch: VllmLaunch, config: SimPodConfig, options: SimOptions) -> VllmLaunch:
    """The real server's definition with the overrides vLLM has flags for. The time scale,
    natural output length, engine id and faults are the simulation's own."""
    extra: list[str] = []
    if options.host is not None:
        extra += ["--host", options.host]
    for flag, value in (
        ("--num-gpu-blocks-override", options.num_gpu_blocks),
        ("--max-num-seqs", options.max_num_seqs),
        ("--tokenizer", options.tokenizer),
    ):
        if value is not None:
            extra += [flag, str(value)]
    if config.enable_request_id_headers:
        extra.append("--enable-request-id-headers")
    if options.kv_events_config is not None:
        extra += ["--kv-events-config", options.kv_events_config]
    return dataclasses.replace(
        launch,
        port=config.port,
        side_channel_port=config.side_channel_port,
        kv_lease_duration=config.kv_lease_duration,
        kv_load_failure_policy=config.kv_load_failure_policy,
        max_model_len=config.max_model_len,
        max_num_batched_tokens=options.max_num_batched_tokens or launch.max_num_batched_tokens,
        extra_args=(*launch.extra_args, *extra),
        tls=server_tls(
            options.ssl_certfile, options.ssl_keyfile, options.ssl_ca_certs, options.ssl_cert_reqs
        ),
    )
