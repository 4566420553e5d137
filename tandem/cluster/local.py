"""A cluster on one machine: each component of a `tandem.cluster.topology` plan as its own child
process, exactly as it would run in its own container, so what runs locally is what runs on
a cluster. Children are started in dependency order (pods, then sidecars, then the
orchestrator), each waited on until healthy, and stopped together: on Ctrl-C, SIGTERM, an
error, or when the launcher itself dies (Linux parent-death signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import httpx

from tandem.cluster import real_engine, tiny_model
from tandem.cluster.mover import PoolMover
from tandem.cluster.readiness import wait_ready
from tandem.cluster.topology import (
    POOLS_BY_ROLE,
    ClusterSpec,
    Component,
    orchestrator_component,
    place_in_slot,
    plan_cluster,
)
from tandem.errors import StartupError
from tandem.logs import EventLog

logger = EventLog(__name__)

_PR_SET_PDEATHSIG = 1


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
        self.mover: PoolMover | None = None
        """Follows the orchestrator's target split, where the pods move between the pools."""

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
        self._write_config()
        orchestrator = orchestrator_component(self.spec, self.config_path)
        try:
            self._start_all(self.plan.components, timeout_s)
            self._start_all([orchestrator], timeout_s)
        except BaseException:
            self.stop()
            raise
        if self.spec.rebalance is not None:
            self.mover = PoolMover(self)
            self.mover.start()

    @property
    def config_path(self) -> Path:
        return self.run_dir / "orchestrator.yaml"

    def _write_config(self) -> None:
        """The orchestrator's file, replaced whole (it re-reads it, a half-written file
        never)."""
        partial = self.config_path.with_suffix(".yaml.new")
        partial.write_text(json.dumps(self.plan.orchestrator_config, indent=2) + "\n")
        partial.replace(self.config_path)

    def _endpoints(self) -> list[dict[str, object]]:
        endpoints = self.plan.orchestrator_config["endpoints"]
        assert isinstance(endpoints, list)
        return endpoints

    def serving(self) -> dict[str, list[str]]:
        """The pods in the orchestrator's endpoint list, by role."""
        by_role: dict[str, list[str]] = {}
        for endpoint in self._endpoints():
            by_role.setdefault(str(endpoint["role"]), []).append(str(endpoint["name"]))
        return by_role

    def withdraw(self, name: str) -> None:
        """Take a pod out of the orchestrator's endpoints: it gets no new requests."""
        endpoints = self._endpoints()
        endpoints[:] = [e for e in endpoints if e["name"] != name]
        self._write_config()

    def pod_url(self, name: str) -> str:
        """Where a pod answers: its vLLM, or a decode pod's sidecar in front of it."""
        component = next(c for c, _ in self.processes if c.name == name)
        return f"http://{self.spec.host}:{component.port}"

    def replace_pod(self, name: str, role: str, timeout_s: float = 60.0) -> str:
        """Stop a withdrawn pod and start a new one of `role` in its slot (the next free
        name of that pool); returns its name once it is healthy and in the endpoints. Call
        it from a thread that lives as long as the cluster: the new pod's processes get
        SIGTERM when the thread that started them ends (`_die_with_parent`)."""
        slot = self.plan.slots.pop(name)
        for component in [c for c, _ in self.processes if c.name in (name, f"{name}-vllm")]:
            self._stop_component(component.name, grace_s=30.0)
        used = {component.name for component in self.plan.components}
        pool = POOLS_BY_ROLE[role].pod_name
        index = next(i for i in itertools.count() if f"{pool}-{i}" not in used)
        placed = place_in_slot(self.spec, slot, role, index)
        self.plan.components += placed.components
        self._start_all(placed.components, timeout_s)
        self.plan.slots[placed.name] = slot
        self._endpoints().append(placed.endpoint)
        self._write_config()
        return placed.name

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

        def check_alive() -> None:
            if process.poll() is not None:
                log = (self.run_dir / f"{component.name}.log").read_text()[-2000:]
                raise StartupError(
                    f"{component.name} exited with status {process.returncode}:\n{log}"
                )

        wait_ready(
            lambda: httpx.get(url, timeout=1), f"{component.name} at {url}",
            timeout_s=max(0.0, deadline - time.monotonic()), check_alive=check_alive,
        )  # fmt: skip

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child (orchestrator first), then SIGKILL what is left."""
        if self.mover is not None:
            self.mover.stop()
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for component, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("component_killed", name=component.name)
            _kill_group(process)
        self.processes.clear()

    def hurry(self) -> None:
        """SIGKILL every child's process group now, without waiting (safe in a signal
        handler, even one that interrupts `stop`, which then reaps them)."""
        for _, process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

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
        component = self._stop_component(name, grace_s)
        self._start_all([component], timeout_s)

    def _stop_component(self, name: str, grace_s: float) -> Component:
        """SIGTERM one component, SIGKILL it after `grace_s`; returns what it was."""
        index, component = next((i, c) for i, (c, _) in enumerate(self.processes) if c.name == name)
        process = self.processes.pop(index)[1]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("component_killed", name=name)
        _kill_group(process)
        return component

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
