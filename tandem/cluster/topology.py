"""A cluster's shape as components: named pods, sidecars and the orchestrator, their
command lines, ports, and the endpoint list the orchestrator is given. Pure: nothing here
starts a process (`tandem.cluster.local` does).

The pods are simulated (the default) or real vLLM from its CPU build (`engine="vllm"`, see
`tandem.cluster.real_engine`), from the same pool definitions either way.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from tandem.cluster import real_engine
from tandem.decode import DECODE
from tandem.errors import UsageError
from tandem.orchestrator.config import DEFAULT_ITL_S, DEFAULT_TTFT_S, AdmissionConfig
from tandem.orchestrator.scheduling.plugins.precise_prefix_cache_producer import (
    KV_EVENTS_PORT_LABEL,
    KV_EVENTS_REPLAY_PORT_LABEL,
)
from tandem.pods.launch import PoolRole, VllmLaunch
from tandem.pods.pool import AGGREGATED, Pod, Pool
from tandem.prefill import PREFILL

Engine = Literal["sim", "vllm"]
ENGINES: tuple[Engine, ...] = ("sim", "vllm")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What to run: pool sizes, engine profile, scheduler and ports."""

    prefill: int = 1
    decode: int = 1
    aggregated: int = 0
    profile: str = "llama-3.1-8b-h100-tp1"
    scheduler: str = "tandem"
    time_scale: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000
    """The orchestrator's port: the one endpoint clients use."""
    base_port: int = 8100
    """Pods, sidecars and side channels take ports upwards from here."""
    seed: int | None = None
    pod_args: tuple[str, ...] = ()
    """Extra arguments for every pod (`tandem sim`'s, e.g. --num-gpu-blocks, or vLLM's)."""
    engine: Engine = "sim"
    """`sim`: simulated pods; `vllm`: real vLLM (CPU build) serving the tiny local model."""
    model_dir: Path | None = None
    """The model real pods serve (default: the tiny model, built into the cache)."""
    admission_max_wait_s: float | None = None
    """Admission control's longest wait, in model seconds (default: the orchestrator's)."""
    sidecar_args: tuple[str, ...] = ()
    """Extra arguments for every sidecar (`tandem sidecar`'s, e.g. --prefill-timeout)."""
    grpc_port: int | None = None
    """Serve the orchestrator's gRPC faces (Pick API, Envoy ext_proc, health) on this port."""
    rebalance: Mapping[str, object] | None = None
    """The orchestrator's `rebalance` section: pods move between the pools (P/D only), each
    restarting in its slot."""

    def __post_init__(self) -> None:
        if self.aggregated and (self.prefill or self.decode):
            raise UsageError("choose either --aggregated N or --prefill/--decode, not both")
        if not self.aggregated and (self.prefill < 0 or self.decode < 1):
            raise UsageError("a P/D cluster needs at least one decode pod")
        if self.rebalance is not None and self.aggregated:
            raise UsageError("pods move between prefill and decode pools: give --prefill/--decode")
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}: choose one of {', '.join(ENGINES)}")


LOCAL_SCRAPE_INTERVAL_S = 0.25
"""Local clusters scrape twice as often as the orchestrator's default: their pods are few."""
LOCAL_RELOAD_INTERVAL_S = 0.5
"""A local cluster whose pods move re-reads its endpoint list this often."""


@dataclass(frozen=True, slots=True)
class Component:
    """One child process: what it is, its command line, and where it answers."""

    name: str
    kind: str
    argv: tuple[str, ...]
    port: int
    health_path: str
    role: str = ""
    serves: str = ""
    env: tuple[tuple[str, str], ...] = ()
    """Variables added to the launcher's environment for this process."""
    startup_timeout_s: float = 60.0


@dataclass(slots=True)
class Plan:
    """The components of a cluster, and the orchestrator config they need."""

    components: list[Component] = field(default_factory=list)
    orchestrator_config: dict[str, object] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)
    """Each pod's slot: its place in the port layout."""


def _tandem(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "tandem", *args)


def _pod(name: str, launch: VllmLaunch, spec: ClusterSpec, side_channel_port: int) -> Component:
    """One vLLM server of the plan: simulated, or the real engine."""
    if spec.engine == "vllm":
        return _real_pod(name, launch, spec)
    return _sim(name, launch, spec, side_channel_port)


def _real_pod(name: str, launch: VllmLaunch, spec: ClusterSpec) -> Component:
    if spec.model_dir is None:
        raise ValueError("real vLLM pods need a model folder (ClusterSpec.model_dir)")
    real = real_engine.cpu_launch(launch, spec.model_dir, host=spec.host)
    argv = (*real.argv(), "--host", spec.host, *spec.pod_args)
    return Component(
        name, "vLLM (CPU)", argv, launch.port, "/health", launch.pool_role, "OpenAI API",
        env=tuple(real.env().items()), startup_timeout_s=real_engine.STARTUP_TIMEOUT_S,
    )  # fmt: skip


def _sim(name: str, launch: VllmLaunch, spec: ClusterSpec, side_channel_port: int) -> Component:
    events = launch.kv_events_argument() or '{"enable_kv_cache_events": false}'
    argv = _tandem(
        "sim", "--role", launch.pool_role, "--profile", spec.profile,
        "--host", spec.host, "--port", str(launch.port),
        "--side-channel-port", str(side_channel_port), "--engine-id", name,
        "--time-scale", str(spec.time_scale), "--kv-events-config", events,
        "--log-level", "warning",
    )  # fmt: skip
    if launch.max_num_batched_tokens is not None:
        argv += ("--max-num-batched-tokens", str(launch.max_num_batched_tokens))
    argv += tuple(spec.pod_args)
    return Component(
        name, "simulated vLLM", argv, launch.port, "/health", launch.pool_role, "OpenAI API"
    )


POOLS: dict[PoolRole, Pool] = {pool.role: pool for pool in (AGGREGATED, PREFILL, DECODE)}
"""Every pool by its role."""


@dataclass(frozen=True, slots=True)
class PoolPod:
    """One pod of a cluster shape, named as every tandem tool names them (`pod-i` aggregated,
    `prefill-i`, `decode-i`), before ports are given out."""

    name: str
    pod: Pod

    @property
    def role(self) -> PoolRole:
        return self.pod.pool.role


def pool_pods(
    *, aggregated: int, prefill: int, decode: int, profile: str | Mapping[str, str]
) -> list[PoolPod]:
    """Every pod of a shape, each defined by its pool; `profile` is every pod's engine
    profile, or each pool's (keys both, prefill, decode)."""
    counts = ((AGGREGATED, aggregated), (PREFILL, prefill), (DECODE, decode))
    return [pool_pod(pool, i, profile) for pool, count in counts for i in range(count)]


def pool_pod(pool: Pool, index: int, profile: str | Mapping[str, str]) -> PoolPod:
    """Pod `index` of `pool` (e.g. `decode-3`), with its pool's engine profile."""
    engine = profile if isinstance(profile, str) else profile[pool.role]
    return PoolPod(f"{pool.pod_name}-{index}", pool.pod(engine))


POOLS_BY_ROLE: dict[str, Pool] = {pool.role: pool for pool in (AGGREGATED, PREFILL, DECODE)}


def plan_cluster(spec: ClusterSpec) -> Plan:
    """Assign ports and command lines to every component of the cluster."""
    plan = Plan()
    port = spec.base_port
    side_channel = spec.base_port + 1000
    endpoints: list[dict[str, object]] = []
    prefill_addresses: list[str] = []
    decode = spec.decode if not spec.aggregated else 0
    pods = pool_pods(
        aggregated=spec.aggregated, prefill=spec.prefill, decode=decode, profile=spec.profile
    )
    if spec.rebalance is not None:  # any slot may come to hold a prefill pod
        prefill_addresses = slot_addresses(spec)
    for slot, named in enumerate(pods):
        if spec.rebalance is not None:
            port, side_channel = spec.base_port + 2 * slot, spec.base_port + 1000 + slot
        placed = _place(named, spec, port, side_channel, prefill_addresses)
        plan.components += placed.components
        endpoints.append(placed.endpoint)
        plan.slots[named.name] = slot
        if named.role == "prefill" and spec.rebalance is None:
            prefill_addresses.append(f"{spec.host}:{port}")
        port, side_channel = port + len(placed.components), side_channel + 1
    max_wait_s = spec.admission_max_wait_s or AdmissionConfig().max_wait_s
    plan.orchestrator_config = {
        "scheduler": spec.scheduler,
        "endpoints": endpoints,
        "gateway": {"host": spec.host, "port": spec.port},
        "scrape": {"interval_s": LOCAL_SCRAPE_INTERVAL_S},
        # The orchestrator waits in wall time; the pods' time runs time_scale times slower.
        "admission": {"max_wait_s": max_wait_s * spec.time_scale},
        "seed": spec.seed,
    }
    if spec.engine == "sim":
        # Simulated pods run the profile's step-time model, so the scaling signals can size
        # their pools: SLO targets of the model, in the pods' (scaled) wall time.
        plan.orchestrator_config["scaling"] = {
            "profile": spec.profile,
            "time_scale": spec.time_scale,
            "ttft_s": DEFAULT_TTFT_S * spec.time_scale,
            "itl_s": DEFAULT_ITL_S * spec.time_scale,
        }
    if spec.rebalance is not None:
        # The orchestrator weighs the pools with the scaling signals (the profile's model,
        # for real pods too), and follows the endpoint list `LocalCluster` rewrites.
        plan.orchestrator_config.setdefault("scaling", {"profile": spec.profile})
        plan.orchestrator_config["rebalance"] = dict(spec.rebalance)
        plan.orchestrator_config["reload"] = {"interval_s": LOCAL_RELOAD_INTERVAL_S}
    if spec.grpc_port is not None:
        plan.orchestrator_config["grpc"] = {
            "enabled": True,
            "host": spec.host,
            "port": spec.grpc_port,
        }
    return plan


@dataclass(frozen=True, slots=True)
class PlacedPod:
    """One pod's processes (vLLM, and a decode pod's sidecar) and its orchestrator endpoint."""

    name: str
    components: list[Component]
    endpoint: dict[str, object]


def _place(
    named: PoolPod, spec: ClusterSpec, port: int, side_channel: int, prefill_addresses: list[str]
) -> PlacedPod:
    launch = _with_events(
        replace(named.pod.vllm, port=port, side_channel_port=side_channel), spec, side_channel
    )
    if named.pod.sidecar_port is None:
        pod = _pod(named.name, launch, spec, side_channel)
        endpoint = _endpoint(named.name, spec.host, port, named.role, launch)
        return PlacedPod(named.name, [pod], endpoint)
    fronted = replace(named.pod, vllm=launch, sidecar_port=port + 1)
    components = [
        _pod(f"{named.name}-vllm", launch, spec, side_channel),
        _sidecar(named.name, fronted, spec, prefill_addresses),
    ]
    endpoint = _endpoint(named.name, spec.host, fronted.serving_port, named.role, launch)
    return PlacedPod(named.name, components, endpoint)


def slot_addresses(spec: ClusterSpec) -> list[str]:
    """Where the vLLM of each of a rebalancing cluster's pod slots answers, whichever its
    role (pods that move between the pools restart in their slot: two ports each, vLLM's
    and a sidecar's)."""
    slots = spec.prefill + spec.decode
    return [f"{spec.host}:{spec.base_port + 2 * slot}" for slot in range(slots)]


def place_in_slot(spec: ClusterSpec, slot: int, role: str, index: int) -> PlacedPod:
    """Pod `index` of the `role` pool (e.g. decode-5) in a slot of a cluster whose pods move
    between the pools, with the same ports, side channel and KV event ports as the slot's
    first pod had."""
    if spec.rebalance is None:
        raise ValueError("pods keep their slots only in a cluster that rebalances")
    named = pool_pod(POOLS_BY_ROLE[role], index, spec.profile)
    port, side_channel = spec.base_port + 2 * slot, spec.base_port + 1000 + slot
    return _place(named, spec, port, side_channel, slot_addresses(spec))


def orchestrator_component(spec: ClusterSpec, config_path: Path) -> Component:
    """The orchestrator, started last, with the plan's config written to `config_path`."""
    return Component(
        "orchestrator", "gateway + scheduler",
        _tandem("orchestrator", "--config", str(config_path), "--log-level", "warning"),
        spec.port, "/ready", "", "OpenAI API",
    )  # fmt: skip


def _sidecar(name: str, pod: Pod, spec: ClusterSpec, prefill_addresses: list[str]) -> Component:
    """A decode pod's sidecar, allowed the prefill pods planned before it."""
    argv = _tandem(
        *pod.sidecar_argv()[1:], "--host", spec.host,
        "--prefill-endpoints", ",".join(prefill_addresses), "--log-level", "warning",
        *spec.sidecar_args,
    )  # fmt: skip
    return Component(name, "sidecar", argv, pod.serving_port, "/health", "decode", "sidecar → vLLM")


def _with_events(launch: VllmLaunch, spec: ClusterSpec, side_channel: int) -> VllmLaunch:
    """The pod with KV event ports of its own (pods here share one host): two per pod,
    upwards from base_port + 2000, in the order their side channels were given out."""
    first = spec.base_port + 2000 + 2 * (side_channel - spec.base_port - 1000)
    return replace(launch, kv_events_port=first, kv_events_replay_port=first + 1)


def _endpoint(name: str, host: str, port: int, role: str, launch: VllmLaunch) -> dict[str, object]:
    """A static endpoint of the orchestrator's config, labelled with where its vLLM
    publishes KV events (the precise prefix index subscribes there)."""
    labels: dict[str, str] = {}
    if launch.kv_events_port is not None:
        labels[KV_EVENTS_PORT_LABEL] = str(launch.kv_events_port)
    if launch.kv_events_replay_port is not None:
        labels[KV_EVENTS_REPLAY_PORT_LABEL] = str(launch.kv_events_replay_port)
    return {"name": name, "host": host, "port": port, "role": role, "labels": labels}
