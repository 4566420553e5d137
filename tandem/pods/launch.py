"""How a vLLM server of a P/D deployment is launched: the `vllm serve` command line and env.

Both pools run the same engine; what differs is the KV-connector role, the serving port and
whether a sidecar sits in front (`tandem.pods.pool`; `prefill/` and `decode/` define each
pool). `VllmLaunch` renders the real command line, and `tandem.simulator.config.simulated_pod`
the equivalent simulated pod, from one set of values, so the Helm charts, the local launcher
and `tandem sim --print-vllm-command` cannot drift apart.

Facts from vLLM 0.33 (vllm-project/vllm: vllm/config/kv_transfer.py, vllm/envs.py,
docs/features/nixl_connector_usage.md): `--kv-transfer-config` takes JSON with
`kv_connector` "NixlConnector", `kv_role`, `kv_load_failure_policy` and
`kv_connector_extra_config` (`kv_lease_duration`, `backends`); the NIXL side channel is
`VLLM_NIXL_SIDE_CHANNEL_HOST` / `_PORT` (default 5600), and the host is advertised to
decoders, so on Kubernetes it must be the pod IP.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Literal

from tandem.http.tls import ServerTLS
from tandem.kvcache.events import DEFAULT_EVENTS_PORT, KVEventsConfig

PoolRole = Literal["prefill", "decode", "both"]
"""Which pool a vLLM server serves in (`llm-d.ai/role`; `both`: an aggregated pod)."""
KVRole = Literal["kv_producer", "kv_consumer", "kv_both"]
"""vLLM's `kv_role`: only a placeholder for behaviour (params decide), but it selects metrics."""
KVLoadFailurePolicy = Literal["fail", "recompute"]
"""vLLM's `kv_load_failure_policy`: what a consumer does when its KV load fails."""
DEFAULT_KV_LEASE_DURATION_S = 30
"""vLLM's `kv_lease_duration` default (kv_connector_extra_config)."""

NIXL_SIDE_CHANNEL_PORT = 5600
KV_EVENTS_PORT = DEFAULT_EVENTS_PORT
KV_EVENTS_REPLAY_PORT = 5558
"""Where each pod publishes its KV cache events (vLLM's default endpoint, tcp://*:5557) and
answers replays of its last batches, for the orchestrator's precise prefix index."""
POD_IP_ENV = "POD_IP"
"""Env var the pod spec fills from `status.podIP` (the downward API)."""


_KV_EVENTS_FIELDS = {"enable_kv_cache_events", "publisher", "endpoint", "replay_endpoint"}
"""The `--kv-events-config` keys set here; the rest keep vLLM's defaults."""


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe of vLLM's health route: over HTTP, HTTPS, or (`path` None) only that the port
    takes connections, where a server requires client certificates the kubelet lacks."""

    path: str | None
    port: int
    initial_delay_s: int
    period_s: int
    failure_threshold: int
    scheme: str = "HTTP"


@dataclass(frozen=True, slots=True)
class VllmLaunch:
    """One vLLM server of a pool: what to run, on which port, with which KV role."""

    pool_role: PoolRole
    profile: str
    """The engine profile of the simulated pod that stands in for this server."""
    model: str
    tensor_parallel_size: int
    port: int
    kv_role: KVRole | None
    served_model_name: str | None = None
    side_channel_host: str = f"$({POD_IP_ENV})"
    side_channel_port: int = NIXL_SIDE_CHANNEL_PORT
    kv_load_failure_policy: KVLoadFailurePolicy = "fail"
    kv_lease_duration: int = DEFAULT_KV_LEASE_DURATION_S
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    """vLLM's `--max-num-batched-tokens`, the tokens one engine step computes; None keeps
    vLLM's default (8192 on a large GPU). A smaller budget bounds how long a prompt computed
    on the pod stalls the requests it is decoding."""
    ucx_tls: str = "all"
    kv_events_port: int | None = KV_EVENTS_PORT
    """None: the pod publishes no KV events."""
    kv_events_replay_port: int | None = KV_EVENTS_REPLAY_PORT
    otlp_traces_endpoint: str | None = None
    """Where vLLM exports its own spans (`--otlp-traces-endpoint`, an OTLP collector), under
    the trace context the sidecar sends; None: it records none."""
    extra_args: tuple[str, ...] = field(default=())
    python: str | None = None
    """Start the server as `python -m vllm.entrypoints.openai.api_server` with this Python
    (vLLM's CPU build has no working `vllm` console script) instead of `vllm serve`."""
    dtype: str | None = None
    enforce_eager: bool = False
    kv_buffer_device: str | None = None
    """Where the NixlConnector keeps KV for transfer (`cpu` on the CPU build)."""
    extra_env: tuple[tuple[str, str], ...] = field(default=())
    tls: ServerTLS | None = None
    """Serve TLS (`--ssl-*`); with a client CA, mutual TLS."""

    def kv_transfer_config(self) -> dict[str, object] | None:
        if self.kv_role is None:
            return None
        config: dict[str, object] = {
            "kv_connector": "NixlConnector",
            "kv_role": self.kv_role,
            "kv_load_failure_policy": self.kv_load_failure_policy,
            "kv_connector_extra_config": {
                "backends": ["UCX"],
                "kv_lease_duration": self.kv_lease_duration,
            },
        }
        if self.kv_buffer_device is not None:
            config["kv_buffer_device"] = self.kv_buffer_device
        return config

    def kv_events_config(self) -> KVEventsConfig | None:
        """vLLM's `--kv-events-config` for this pod: publish on all interfaces."""
        if self.kv_events_port is None:
            return None
        replay = self.kv_events_replay_port
        return KVEventsConfig(
            enable_kv_cache_events=True,
            publisher="zmq",
            endpoint=f"tcp://*:{self.kv_events_port}",
            replay_endpoint=None if replay is None else f"tcp://*:{replay}",
        )

    def argv(self) -> list[str]:
        """The `vllm serve` command line."""
        if self.python is None:
            server = ["vllm", "serve", self.model]
        else:
            server = [
                self.python,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                self.model,
            ]
        args = [
            *server,
            "--port", str(self.port),
            "--served-model-name", self.served_model_name or self.model,
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--gpu-memory-utilization", str(self.gpu_memory_utilization),
            "--block-size", str(self.block_size),
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--enable-server-load-tracking",
        ]  # fmt: skip
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.max_num_batched_tokens is not None:
            args += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        if self.dtype is not None:
            args += ["--dtype", self.dtype]
        if self.enforce_eager:
            args.append("--enforce-eager")
        kv_config = self.kv_transfer_config()
        if kv_config is not None:
            args += ["--kv-transfer-config", json.dumps(kv_config, separators=(",", ":"))]
        events = self.kv_events_argument()
        if events is not None:
            args += ["--kv-events-config", events]
        if self.otlp_traces_endpoint is not None:
            args += ["--otlp-traces-endpoint", self.otlp_traces_endpoint]
        return args + self.tls_args() + list(self.extra_args)

    def tls_args(self) -> list[str]:
        """vLLM's `--ssl-*` flags for `tls`."""
        tls = self.tls
        if tls is None:
            return []
        args = ["--ssl-certfile", tls.cert_file, "--ssl-keyfile", tls.key_file]
        if tls.client_ca_file is not None:
            args += ["--ssl-ca-certs", tls.client_ca_file, "--ssl-cert-reqs", "2"]
        return args

    def kv_events_argument(self) -> str | None:
        """The `--kv-events-config` JSON, or None when the pod publishes no events."""
        events = self.kv_events_config()
        if events is None:
            return None
        document = events.model_dump(include=_KV_EVENTS_FIELDS, exclude_none=True)
        return json.dumps(document, separators=(",", ":"))

    def env(self) -> dict[str, str]:
        """Environment for the vLLM container (NIXL side channel, UCX transports)."""
        env = dict(self.extra_env)
        if self.kv_role is None:
            return env
        return {
            **env,
            "VLLM_NIXL_SIDE_CHANNEL_HOST": self.side_channel_host,
            "VLLM_NIXL_SIDE_CHANNEL_PORT": str(self.side_channel_port),
            "UCX_TLS": self.ucx_tls,
        }

    def shell_command(self) -> str:
        """The command line with its environment, ready to paste into a shell."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env().items())
        command = shlex.join(self.argv())
        return f"{env} {command}" if env else command

    def probes(self) -> dict[str, Probe]:
        """Startup tolerates model loading; readiness and liveness then watch /health (under
        mutual TLS, the open port: the kubelet has no client certificate)."""
        tls = self.tls
        path = None if tls is not None and tls.client_ca_file is not None else "/health"
        scheme = "HTTPS" if tls is not None else "HTTP"
        return {
            "startup": Probe(path, self.port, 10, 10, 90, scheme),
            "readiness": Probe(path, self.port, 0, 5, 3, scheme),
            "liveness": Probe(path, self.port, 0, 10, 6, scheme),
        }
