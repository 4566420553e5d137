"""Moving a local cluster's pods between the pools, as its orchestrator's rebalancer asks.

The orchestrator decides (`orchestrator/rebalance.py`) and exports the split its last move
leads to, `tandem_pool_target_replicas{pool}`. Whoever runs the pods acts on it; here that
is `PoolMover`, in `tandem up`'s process. When a pool has more pods than its target, it
moves one: the pod the orchestrator has the fewest requests in flight to leaves the
orchestrator's endpoint list (which the orchestrator re-reads: no new requests go there),
drains (its engine runs and queues nothing and holds no KV, prefilled KV for a decoder
included, and a decode pod's sidecar holds no request still prefilling elsewhere, twice in
a row), stops, and a pod of the other role starts in its slot and joins the endpoint list
once healthy. One move at a time.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tandem.errors import StartupError
from tandem.logs import EventLog
from tandem.orchestrator.rebalance import POOLS as ROLES

if TYPE_CHECKING:
    from tandem.cluster.local import LocalCluster

logger = EventLog(__name__)

TARGET = "tandem_pool_target_replicas"
POOL_REPLICAS = "tandem_pool_replicas"
IN_FLIGHT = "tandem_in_flight_requests"
BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
"""0 on an idle engine (the charts' preStop hook waits for the same)."""
SIDECAR_BUSY = "tandem_sidecar_requests_in_flight"
"""0 when a decode pod's sidecar holds no request vLLM has yet to see."""


@dataclass(frozen=True, slots=True)
class LocalMove:
    """A pod that left one pool and the pod that took its slot in the other."""

    pod: str
    new_pod: str
    started_s: float
    drained_s: float
    ended_s: float


@dataclass(eq=False)
class PoolMover:
    cluster: LocalCluster
    poll_s: float = 0.5
    drain_timeout_s: float = 600.0
    """A pod still busy after this long is stopped anyway (its requests fail over)."""
    start_timeout_s: float = 600.0
    """How long the new pod may take to answer: a real engine starting beside busy pods on
    a small machine takes minutes."""
    moves: list[LocalMove] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _asked: queue.Queue[tuple[str, str, Future[LocalMove]]] = field(default_factory=queue.Queue)
    """Moves asked for by name, made by the mover's thread: a pod's processes must be
    started by a thread that outlives them (the kernel's parent-death signal, which stops
    them with the launcher, follows the thread that started them)."""

    def request_move(self, name: str, role: str) -> Future[LocalMove]:
        """Move pod `name` to the `role` pool, whatever the target split says."""
        done: Future[LocalMove] = Future()
        self._asked.put((name, role, done))
        return done

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pool-mover", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._asked_moves()
                self.step()
            except MoveAborted:
                return
            except (httpx.HTTPError, OSError, ValueError) as exc:
                logger.warning("pool_mover_retry", error=exc)
            except StartupError as exc:  # the new pod did not come up: its slot stays empty
                logger.error("pod_move_failed", error=exc)

    def _asked_moves(self) -> None:
        while not self._asked.empty():
            name, role, done = self._asked.get()
            serving = self.cluster.serving()
            source = next(role for role, names in serving.items() if name in names)
            left = len(serving[source]) - 1
            try:
                done.set_result(self.move(name, source, role, left))
            except BaseException as exc:  # the caller hears of it; the mover goes on
                done.set_exception(exc)
                if isinstance(exc, MoveAborted):
                    raise

    def step(self) -> LocalMove | None:
        """Look once; make the move the target asks for, if any."""
        samples = _samples(f"{self.cluster.url}/metrics")
        target = {role: samples.get((TARGET, role)) for role in ROLES}
        serving = self.cluster.serving()
        counts = {role: len(serving.get(role, [])) for role in ROLES}
        source = next(
            (r for r in ROLES if target[r] is not None and counts[r] > (target[r] or 0)), None
        )
        if source is None:
            return None
        role = "decode" if source == "prefill" else "prefill"
        in_flight = {name: samples.get((IN_FLIGHT, name), 0.0) for name in serving[source]}
        leaving = min(in_flight, key=lambda name: (in_flight[name], name))
        return self.move(leaving, source, role, counts[source] - 1)

    def move(self, name: str, source: str, role: str, left: int) -> LocalMove:
        """Withdraw `name`, wait for it to drain, and start a `role` pod in its slot."""
        started = time.monotonic()
        logger.info("pod_move_started", pod=name, source=source, target=role)
        self.cluster.withdraw(name)
        pod = self.cluster.pod_url(name)
        deadline = started + self.drain_timeout_s

        # The orchestrator has read the new list, then the pod has nothing left to do.
        def seen_by_orchestrator() -> bool:
            return _samples(f"{self.cluster.url}/metrics").get((POOL_REPLICAS, source)) == left

        idle_checks = 0
        while idle_checks < 2:
            idle_checks = idle_checks + 1 if seen_by_orchestrator() and _idle(pod) else 0
            if not self._wait(deadline):
                logger.warning("pod_drain_timed_out", pod=name, after_s=self.drain_timeout_s)
                break
        drained = time.monotonic()
        new = self.cluster.replace_pod(name, role, timeout_s=self.start_timeout_s)
        move = LocalMove(name, new, started, drained, time.monotonic())
        self.moves.append(move)
        logger.info(
            "pod_move_ended", pod=name, new_pod=new, drain_s=f"{drained - started:.1f}",
            restart_s=f"{move.ended_s - drained:.1f}",
        )  # fmt: skip
        return move

    def _wait(self, deadline: float) -> bool:
        """Sleep a poll; False once the deadline has passed. Raises when stopping."""
        if self._stop.wait(self.poll_s):
            raise MoveAborted("the cluster is stopping")
        return time.monotonic() < deadline


def _idle(url: str) -> bool:
    """Whether a pod's engine runs and queues nothing and holds no KV, and its sidecar (a
    decode pod's /metrics carries both) holds nothing for it."""
    samples = _samples(f"{url}/metrics")
    return all(samples.get((name, None), 1.0) == 0 for name in BUSY) and not samples.get(
        (SIDECAR_BUSY, None)
    )


def _samples(url: str) -> dict[tuple[str, str | None], float]:
    """A Prometheus exposition's samples by (name, pool or endpoint label), summed."""
    text = httpx.get(url, timeout=5).text
    samples: dict[tuple[str, str | None], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = sample.labels.get("pool", sample.labels.get("endpoint"))
            key = (sample.name, label)
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


class MoveAborted(Exception):
    """The cluster stopped while a pod was moving."""
