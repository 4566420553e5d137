"""Admission control: a bounded, prioritised queue in front of each pool.

A request is placed (scheduled, and counted on its endpoints) as soon as the pools it needs
have room by the scheduler's saturation detector; until then it waits here, not in a pod's
queue, so that when room opens it is scheduled against the state of that moment:

- every request needs the decode pool; one the scheduler would disaggregate also needs the
  prefill pool (while that pool is saturated, where a request would go is looked at without
  being remembered, and a request that would prefill locally goes ahead);
- waiting requests are placed by priority, then in arrival order, whenever room may have
  opened (a prefill or an answer ended, a scrape came in, the endpoints changed);
- the priority comes from `x-tandem-priority`: `critical` waits ahead of `standard` (the
  default) and may displace the newest `standard` request from a full queue; `sheddable` is
  never queued: it is refused while its pool is saturated (as the Gateway API Inference
  Extension sheds requests of negative priority);
- refusals are 429 with Retry-After and `x-tandem-reject-reason` (`shed`, `queue_full`,
  `queue_timeout`, `displaced`); a pool with no endpoint able to take requests is a 503
  (`no_endpoints`) at once, never a wait — unless its endpoints have only just been
  discovered and their first scrape is on the way (an orchestrator that just started).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tandem.errors import OpenAIError
from tandem.logs import EventLog
from tandem.orchestrator.config import AdmissionConfig
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.router import Loads, Pools, Router
from tandem.orchestrator.scheduling.types import PDDecision, SchedulingRequest, SchedulingResult

logger = EventLog(__name__)

PRIORITY_HEADER = "x-tandem-priority"


class Priority(enum.IntEnum):
    """Lower values are placed first."""

    CRITICAL = 0
    STANDARD = 1
    SHEDDABLE = 2


def priority_of(headers: Mapping[str, str]) -> Priority:
    """The request's priority from `x-tandem-priority` (default standard); a 400 otherwise."""
    value = headers.get(PRIORITY_HEADER)
    if value is None:
        return Priority.STANDARD
    try:
        return Priority[value.strip().upper()]
    except KeyError:
        names = ", ".join(p.name.lower() for p in Priority)
        raise OpenAIError(
            400, f"{PRIORITY_HEADER} must be one of {names}; got {value[:64]!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class Placement:
    """A request scheduled and counted on its endpoints."""

    result: SchedulingResult
    loads: Loads
    waited_s: float = 0.0


_DECODE, _PREFILL = "decode", "prefill"


@dataclass(eq=False, slots=True)
class _Waiter:
    request: SchedulingRequest
    priority: Priority
    exclude: frozenset[str]
    arrived: float
    sequence: int
    pool: str
    """The pool it waits for."""
    future: asyncio.Future[Placement]
    timer: asyncio.TimerHandle | None = None

    @property
    def order(self) -> tuple[int, int]:
        return (self.priority, self.sequence)


@dataclass(slots=True)
class Admission:
    """The gateway's admission queue over a `Router`, on one event loop."""

    router: Router
    config: AdmissionConfig
    metrics: GatewayMetrics
    clock: Callable[[], float] = time.monotonic
    _waiting: list[_Waiter] = field(default_factory=list)
    """Sorted by (priority, arrival)."""
    _sequence: itertools.count[int] = field(default_factory=itertools.count)
    _pumping: bool = False

    def __post_init__(self) -> None:
        self.router.capacity_listener = self.pump

    def queued(self, pool: str) -> int:
        return sum(1 for waiter in self._waiting if waiter.pool == pool)

    async def admit(
        self,
        request: SchedulingRequest,
        priority: Priority = Priority.STANDARD,
        exclude: frozenset[str] = frozenset(),
    ) -> Placement:
        """Place the request now, or once its pools have room; raises OpenAIError (429,
        503) when it will not be placed."""
        self.pump()
        outcome = self._place(request, exclude)
        if isinstance(outcome, Placement):
            self.metrics.admissions.labels(priority.name.lower(), "admitted").inc()
            return outcome
        waiter = self._enqueue(request, priority, exclude, outcome)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._remove(waiter)
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Placed in the same tick the client left: give its room back.
                self.router.release(future.result().loads)
            raise

    def pump(self) -> None:
        """Place waiting requests while their pools have room."""
        if not self._waiting or self._pumping:
            return
        self._pumping = True
        try:
            pools = self.router.pools(self.clock())
            for waiter in list(self._waiting):
                if waiter.future.done():  # its client left
                    self._remove(waiter)
                    continue
                if not pools.decode.open and pools.decode.endpoints:
                    break  # every request needs the decode pool
                if waiter.pool == _PREFILL and not pools.prefill.open and pools.prefill.endpoints:
                    continue
                try:
                    outcome = self._place(waiter.request, waiter.exclude)
                except OpenAIError as exc:
                    self._finish(waiter, exc)
                    continue
                if isinstance(outcome, Placement):
                    placed = Placement(outcome.result, outcome.loads, self.clock() - waiter.arrived)
                    self._finish(waiter, placed)
                    pools = self.router.pools(self.clock())
                else:
                    waiter.pool = outcome
        finally:
            self._pumping = False
            self._gauges()

    # -- placing --------------------------------------------------------------------------

    def _place(self, request: SchedulingRequest, exclude: frozenset[str]) -> Placement | str:
        """Schedule and count the request, or name the pool it has to wait for."""
        pools: Pools = self.router.pools(self.clock(), exclude)
        if not pools.decode.endpoints:
            if pools.decode.warming_up:
                return _DECODE  # its first scrape is on the way
            # Raises the 503 that says what is missing.
            self.router.schedule(request, exclude, record=False)
        if not pools.decode.open:
            return _DECODE
        skip = exclude | pools.decode.saturated
        if pools.prefill.endpoints and not pools.prefill.open:
            look = self.router.schedule(request, skip, record=False)
            if look.decision is PDDecision.DISAGGREGATE:
                return _PREFILL
        else:
            skip |= pools.prefill.saturated
        result = self.router.schedule(request, skip)
        return Placement(result, self.router.acquire(request, result))

    # -- the queue ------------------------------------------------------------------------

    def _enqueue(
        self,
        request: SchedulingRequest,
        priority: Priority,
        exclude: frozenset[str],
        pool: str,
    ) -> _Waiter:
        if priority is Priority.SHEDDABLE:
            raise self._refusal(
                request, priority, "shed",
                f"the {pool} pool is saturated and the request is sheddable",
            )  # fmt: skip
        if self.queued(pool) >= self.config.max_queue_per_pool:
            newest_standard = next(
                (w for w in reversed(self._waiting) if w.pool == pool and w.priority > priority),
                None,
            )
            if newest_standard is None:
                raise self._refusal(
                    request, priority, "queue_full",
                    f"the {pool} pool is saturated and its queue holds "
                    f"{self.config.max_queue_per_pool} requests",
                )  # fmt: skip
            self._finish(
                newest_standard,
                self._refusal(
                    newest_standard.request, newest_standard.priority, "displaced",
                    f"the {pool} pool is saturated and a critical request took this one's "
                    "place in its queue",
                ),
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            request, priority, exclude, self.clock(), next(self._sequence), pool,
            loop.create_future(),
        )  # fmt: skip
        waiter.timer = loop.call_later(self.config.max_wait_s, self._expire, waiter)
        bisect.insort(self._waiting, waiter, key=lambda w: w.order)
        self._gauges()
        return waiter

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done():
            return
        self._finish(
            waiter,
            self._refusal(
                waiter.request, waiter.priority, "queue_timeout",
                f"the {waiter.pool} pool stayed saturated for {self.config.max_wait_s:g} s",
            ),
        )  # fmt: skip

    def _finish(self, waiter: _Waiter, outcome: Placement | OpenAIError) -> None:
        self._remove(waiter)
        if waiter.future.done():  # its client left
            if isinstance(outcome, Placement):
                self.router.release(outcome.loads)
            return
        if isinstance(outcome, Placement):
            self.metrics.admissions.labels(waiter.priority.name.lower(), "admitted").inc()
            self.metrics.admission_wait.observe(outcome.waited_s)
            waiter.future.set_result(outcome)
        else:
            waiter.future.set_exception(outcome)
        self._gauges()

    def _remove(self, waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        with contextlib.suppress(ValueError):
            self._waiting.remove(waiter)

    def _refusal(
        self, request: SchedulingRequest, priority: Priority, reason: str, message: str
    ) -> OpenAIError:
        self.metrics.admissions.labels(priority.name.lower(), reason).inc()
        self.metrics.rejections.labels(reason).inc()
        logger.warning(
            "request_refused",
            request_id=request.request_id,
            priority=priority.name.lower(),
            reason=reason,
        )
        retry_after = str(self.router.config.gateway.retry_after_s)
        return OpenAIError(
            429, f"{message}; retry later", headers={"retry-after": retry_after},
            reject_reason=reason,
        )  # fmt: skip

    def _gauges(self) -> None:
        for pool in (_DECODE, _PREFILL):
            self.metrics.admission_queue.labels(pool).set(self.queued(pool))
