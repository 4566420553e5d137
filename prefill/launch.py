"""How a vLLM pod of a P/D deployment is launched: the `vllm serve` command line and env.

Both pools run the same engine; what differs is the KV-connector role, the serving port and
whether a sidecar sits in front. `VllmLaunch` renders the real command line, and
`simulated()` the equivalent simulated pod, from one set of values, so the Helm charts, the
local launcher and `tandem sim --print-vllm-command` cannot drift apart.

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

from kvcache.events import DEFAULT_EVENTS_PORT, KVEventsConfig
from simulator.config import PodRole, SimPodConfig
from simulator.kv_connector import DEFAULT_KV_LEASE_DURATION_S, KVLoadFailurePolicy, KVRole
from simulator.profiles import get_profile

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
    """An HTTP probe on vLLM's health route."""

    path: str
    port: int
    initial_delay_s: int
    period_s: int
    failure_threshold: int


@dataclass(frozen=True, slots=True)
class VllmLaunch:
    """One vLLM server of a pool: what to run, on which port, with which KV role."""

    pool_role: PodRole
    profile: str
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
    ucx_tls: str = "all"
    kv_events_port: int | None = KV_EVENTS_PORT
    """None: the pod publishes no KV events."""
    kv_events_replay_port: int | None = KV_EVENTS_REPLAY_PORT
    extra_args: tuple[str, ...] = field(default=())
    model_override: str | None = None
    """The model to serve instead of the profile's (a deployment's own model)."""
    tensor_parallel_size_override: int | None = None
    """The tensor-parallel size to use instead of the profile's."""
    python: str | None = None
    """Start the server as `python -m vllm.entrypoints.openai.api_server` with this Python
    (vLLM's CPU build has no working `vllm` console script) instead of `vllm serve`."""
    dtype: str | None = None
    enforce_eager: bool = False
    kv_buffer_device: str | None = None
    """Where the NixlConnector keeps KV for transfer (`cpu` on the CPU build)."""
    extra_env: tuple[tuple[str, str], ...] = field(default=())

    @property
    def model(self) -> str:
        if self.model_override is not None:
            return self.model_override
        return get_profile(self.profile).model

    @property
    def tensor_parallel_size(self) -> int:
        if self.tensor_parallel_size_override is not None:
            return self.tensor_parallel_size_override
        return get_profile(self.profile).tensor_parallel_size

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
        return args + list(self.extra_args)

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
        """Startup tolerates model loading; readiness and liveness then watch /health."""
        return {
            "startup": Probe("/health", self.port, 10, 10, 90),
            "readiness": Probe("/health", self.port, 0, 5, 3),
            "liveness": Probe("/health", self.port, 0, 10, 6),
        }

    def simulated(self, *, host: str = "127.0.0.1", time_scale: float = 1.0) -> SimPodConfig:
        """The simulated pod that stands in for this vLLM server."""
        side_host = host if self.side_channel_host.startswith("$(") else self.side_channel_host
        return SimPodConfig(
            role=self.pool_role,
            profile=self.profile,
            served_model_name=self.served_model_name or self.model_override,
            host=host,
            port=self.port,
            side_channel_host=side_host,
            side_channel_port=self.side_channel_port,
            time_scale=time_scale,
            block_size=self.block_size,
            max_model_len=self.max_model_len,
            enable_prompt_tokens_details=True,
            enable_server_load_tracking=True,
            kv_role=self.kv_role,
            kv_lease_duration=self.kv_lease_duration,
            kv_load_failure_policy=self.kv_load_failure_policy,
            kv_events_config=self.kv_events_config(),
        )
