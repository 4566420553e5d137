"""A whole tandem deployment on one machine: vLLM pods, sidecars and the orchestrator.

The pods are simulated (the default) or real vLLM from its CPU build (`engine="vllm"`, see
`tandem.real_engine`), from the same pool definitions either way.

Each component runs as its own child process, exactly as it would in its own container, so
what runs locally is what runs on a cluster. Children are started in dependency order (pods,
then sidecars, then the orchestrator), each waited on until healthy, and stopped together:
on Ctrl-C, SIGTERM, an error, or when the launcher itself dies (Linux parent-death signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import httpx

from decode.pod import decode_pod
from orchestrator.config import AdmissionConfig
from orchestrator.scheduling.plugins.precise_prefix_cache_producer import (
    KV_EVENTS_PORT_LABEL,
    KV_EVENTS_REPLAY_PORT_LABEL,
)
from prefill.launch import VllmLaunch
from prefill.pod import aggregated_pod, prefill_pod
from tandem import real_engine, tiny_model

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

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

    def __post_init__(self) -> None:
        if self.aggregated and (self.prefill or self.decode):
            raise ValueError("choose either --aggregated N or --prefill/--decode, not both")
        if not self.aggregated and (self.prefill < 0 or self.decode < 1):
            raise ValueError("a P/D cluster needs at least one decode pod")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: choose one of {', '.join(ENGINES)}")


LOCAL_SCRAPE_INTERVAL_S = 0.25
"""Local clusters scrape twice as often as the orchestrator's default: their pods are few."""


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


def _tandem(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "tandem.cli", *args)


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
        "--log-level", "warning", *spec.pod_args,
    )  # fmt: skip
    return Component(
        name, "simulated vLLM", argv, launch.port, "/health", launch.pool_role, "OpenAI API"
    )


def plan_cluster(spec: ClusterSpec) -> Plan:
    """Assign ports and command lines to every component of the cluster."""
    plan = Plan()
    port = spec.base_port
    side_channel = spec.base_port + 1000
    endpoints: list[dict[str, object]] = []
    prefill_addresses: list[str] = []
    for index in range(spec.aggregated):
        launch = _with_events(aggregated_pod(spec.profile, port=port), spec, side_channel)
        plan.components.append(_pod(f"pod-{index}", launch, spec, side_channel))
        endpoints.append(_endpoint(f"pod-{index}", spec.host, port, "both", launch))
        port, side_channel = port + 1, side_channel + 1
    for index in range(spec.prefill):
        launch = _with_events(
            prefill_pod(spec.profile, port=port, side_channel_port=side_channel),
            spec, side_channel,
        )  # fmt: skip
        name = f"prefill-{index}"
        plan.components.append(_pod(name, launch, spec, side_channel))
        endpoints.append(_endpoint(name, spec.host, port, "prefill", launch))
        prefill_addresses.append(f"{spec.host}:{port}")
        port, side_channel = port + 1, side_channel + 1
    for index in range(spec.decode if not spec.aggregated else 0):
        pod = decode_pod(
            spec.profile, vllm_port=port, sidecar_port=port + 1, side_channel_port=side_channel
        )
        vllm = _with_events(pod.vllm, spec, side_channel)
        name = f"decode-{index}"
        plan.components.append(_pod(f"{name}-vllm", vllm, spec, side_channel))
        sidecar_argv = _tandem(
            *pod.sidecar_argv()[1:], "--host", spec.host,
            "--prefill-endpoints", ",".join(prefill_addresses), "--log-level", "warning",
            *spec.sidecar_args,
        )  # fmt: skip
        plan.components.append(
            Component(name, "sidecar", sidecar_argv, pod.sidecar_port, "/health", "decode",
                      "sidecar → vLLM")
        )  # fmt: skip
        endpoints.append(_endpoint(name, spec.host, pod.sidecar_port, "decode", vllm))
        port, side_channel = port + 2, side_channel + 1
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
    return plan


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


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, so nothing is left orphaned."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of a child's process group, then reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class LocalCluster:
    """Starts a plan's components, waits for health, and stops them all together."""

    def __init__(self, spec: ClusterSpec, run_dir: Path) -> None:
        if spec.engine == "vllm" and spec.model_dir is None:
            spec = replace(spec, model_dir=tiny_model.model_dir())
        self.spec = spec
        self.run_dir = run_dir
        self.plan = plan_cluster(spec)
        self.processes: list[tuple[Component, subprocess.Popen[bytes]]] = []

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start everything, or stop what started and raise."""
        if self.spec.engine == "vllm":
            real_engine.check_engine()
            if self.spec.model_dir == tiny_model.model_dir():
                tiny_model.ensure_model()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.run_dir / "orchestrator.yaml"
        config_path.write_text(json.dumps(self.plan.orchestrator_config, indent=2) + "\n")
        orchestrator = Component(
            "orchestrator", "gateway + scheduler",
            _tandem("orchestrator", "--config", str(config_path), "--log-level", "warning"),
            self.spec.port, "/ready", "", "OpenAI API",
        )  # fmt: skip
        try:
            self._start_all(self.plan.components, timeout_s)
            self._start_all([orchestrator], timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, components: Sequence[Component], timeout_s: float) -> None:
        for component in components:
            log = (self.run_dir / f"{component.name}.log").open("ab")
            process = subprocess.Popen(
                component.argv,
                env={**os.environ, **dict(component.env)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group, like a container: a pod's helpers (vLLM's engine
                # core) are stopped or killed with it, never left behind.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            self.processes.append((component, process))
        longest = max((c.startup_timeout_s for c in components), default=0.0)
        deadline = time.monotonic() + max(timeout_s, longest)
        for component in components:
            self._wait_healthy(component, deadline)

    def _wait_healthy(self, component: Component, deadline: float) -> None:
        url = f"http://{self.spec.host}:{component.port}{component.health_path}"
        process = next(p for c, p in self.processes if c is component)
        while True:
            if process.poll() is not None:
                log = (self.run_dir / f"{component.name}.log").read_text()[-2000:]
                raise RuntimeError(
                    f"{component.name} exited with status {process.returncode}:\n{log}"
                )
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{component.name} not healthy at {url} in time")
            time.sleep(0.1)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child (orchestrator first), then SIGKILL what is left."""
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for component, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("component_killed name=%s", component.name)
            _kill_group(process)
        self.processes.clear()

    def kill(self, name: str) -> None:
        """SIGKILL one component with everything it started, as a container crash would."""
        _kill_group(self._process(name))

    def signal(self, name: str, signum: signal.Signals) -> None:
        """Send one component's process group a signal (SIGSTOP freezes it as a hung node
        would, SIGCONT thaws it)."""
        os.killpg(self._process(name).pid, signum)

    def restart(self, name: str, timeout_s: float = 60.0, grace_s: float = 30.0) -> None:
        """Stop one component (SIGTERM, then SIGKILL after `grace_s`) and start it again, as
        a rolling update or a restarted container would; returns once it is healthy."""
        index, component = next((i, c) for i, (c, _) in enumerate(self.processes) if c.name == name)
        process = self.processes.pop(index)[1]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("component_killed name=%s", name)
        _kill_group(process)
        self._start_all([component], timeout_s)

    def _process(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for c, p in self.processes if c.name == name)

    def all_components(self) -> list[Component]:
        return [component for component, _ in self.processes]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def default_run_dir() -> Path:
    return Path(os.environ.get("TANDEM_RUN_DIR", ".tandem")) / time.strftime("run-%Y%m%d-%H%M%S")
