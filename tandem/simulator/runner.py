"""Drives the pure engine in wall-clock time for the HTTP shell.

Model time runs `time_scale` times slower than wall time, so a small machine can imitate fast
hardware; everything the pod reports (metrics, timestamps) is in model time. One task steps
the engine; each remote KV load runs as its own task (read over the side channel, wait the
modelled transfer time, report back); a heartbeat task keeps producers' leases alive for
remote-prefill requests still queued here. A stopping producer waits for its consumers to
read what it holds (`drain_held_kv`) before the loops stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tandem.costmodel.profiles import EngineProfile
from tandem.errors import KVReadError, KVTransferError
from tandem.kvcache.events import KVEvent
from tandem.logs import EventLog
from tandem.simulator.engine import Engine
from tandem.simulator.kv_connector import RemoteLoad, RemotePrefill
from tandem.simulator.request import EngineRequest, FinishReason, RequestOutput, RequestStatus
from tandem.simulator.transfer import KVTransport

logger = EventLog(__name__)


class ModelClock:
    """Model time since start: wall time divided by the time scale."""

    def __init__(self, time_scale: float, wall: Callable[[], float] = time.monotonic) -> None:
        self.time_scale = time_scale
        self._wall = wall
        self._start = wall()

    def now(self) -> float:
        return (self._wall() - self._start) / self.time_scale

    async def sleep_until(self, model_time: float) -> None:
        delay = (model_time - self.now()) * self.time_scale
        if delay > 0:
            await asyncio.sleep(delay)

    async def sleep(self, model_seconds: float) -> None:
        await asyncio.sleep(model_seconds * self.time_scale)


@dataclass(frozen=True, slots=True)
class KVDrain:
    """How a stopping producer's wait for its consumers ended."""

    held: int
    """KV block sets held for remote decoders when the wait began."""
    expired: int
    """Of those, how many were freed by their lease running out rather than read."""
    left: int
    """Still held when it ended; more than 0 only when it timed out."""
    waited_s: float
    """Model seconds the wait took."""


class EngineRunner:
    """Owns the engine loop and routes each request's outputs to its stream."""

    def __init__(
        self,
        engine: Engine,
        profile: EngineProfile,
        clock: ModelClock,
        transport: KVTransport,
        on_dead: Callable[[], None] | None = None,
        on_kv_events: Callable[[list[KVEvent]], None] | None = None,
    ) -> None:
        self.engine = engine
        self._on_dead = on_dead
        self._on_kv_events = on_kv_events
        self.profile = profile
        self.clock = clock
        self.transport = transport
        self.dead_reason: str | None = None
        self._streams: dict[str, asyncio.Queue[RequestOutput]] = {}
        self._wake = asyncio.Event()
        self._holds_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="engine-loop")
        self._spawn(self._heartbeat_loop())
        self._spawn(self._expiry_loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def alive(self) -> bool:
        return self.dead_reason is None

    async def drain_held_kv(self, timeout_s: float) -> KVDrain:
        """Wait until consumers have read and released every KV block set held for them (or
        its lease ran out), for at most `timeout_s` model seconds. Call it before `stop`: the
        side channel and the expiry loop free the blocks."""
        start, stats = self.clock.now(), self.engine.stats.transfer
        held, expired_before = len(self.engine.held.requests), stats.num_kv_expired_reqs
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s * self.clock.time_scale):
                while self.engine.held.requests:
                    self._holds_freed.clear()
                    await self._holds_freed.wait()
        return KVDrain(
            held=held,
            expired=stats.num_kv_expired_reqs - expired_before,
            left=len(self.engine.held.requests),
            waited_s=self.clock.now() - start,
        )

    # -- requests --------------------------------------------------------------------------

    def submit(self, request: EngineRequest) -> asyncio.Queue[RequestOutput]:
        """Queue a request; its outputs arrive on the returned queue, the last one finished."""
        stream: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._streams[request.request_id] = stream
        request.arrival_time = self.clock.now()
        self.engine.add_request(request)
        self._wake.set()
        return stream

    def abort(self, request_id: str) -> None:
        """The client went away: free everything the request holds, tell its producer."""
        self._streams.pop(request_id, None)
        request = self.engine.request(request_id)
        # Queued behind others, the producer still holds the blocks for us: release them.
        # (An in-flight load releases them itself when it ends.)
        queued_remote = (
            request is not None
            and request.awaits_remote_kv
            and request.status is RequestStatus.WAITING
        )
        source = request.remote if request is not None and queued_remote else None
        output = self.engine.abort_request(request_id, self.clock.now())
        if output is not None:
            logger.info("request_aborted", request_id=request_id)
        if source is not None:
            self._spawn(self._notify_done(source))

    def release_rejected(self, kv_transfer_params: dict[str, Any]) -> None:
        """A remote-prefill request was refused before reaching the engine: tell the producer
        it is done with the blocks, as vLLM's connector does for such a request."""
        source = RemotePrefill.parse(kv_transfer_params)
        if source is not None:
            logger.info(
                "kv_released_for_rejected_request", remote_request_id=source.remote_request_id
            )
            self._spawn(self._notify_done(source))

    # -- producer side (called by the side-channel server) ---------------------------------

    def handle_side_channel(self, message: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        op = message["op"]
        if op == "read":
            if message["engine_id"] != self.engine.identity.engine_id:
                return {"ok": False, "error": f"unknown engine id {message['engine_id']}"}
            try:
                held = self.engine.read_held(
                    str(message["request_id"]), tuple(int(b) for b in message["block_ids"]), now
                )
            except KVReadError as exc:
                return {"ok": False, "error": str(exc)}
            num_bytes = held.num_tokens * self.profile.kv_bytes_per_token
            return {"ok": True, "num_tokens": held.num_tokens, "num_bytes": num_bytes}
        if op == "heartbeat":
            self.engine.heartbeat_held([str(r) for r in message["request_ids"]], now)
            return {"ok": True}
        if op == "done":
            released = self.engine.release_held(str(message["request_id"]))
            if released:
                self._wake.set()
                self._holds_freed.set()
            return {"ok": True, "released": released}
        return {"ok": False, "error": f"unknown op {op!r}"}

    # -- loops -----------------------------------------------------------------------------

    async def _run(self) -> None:
        last_end = 0.0
        try:
            while True:
                if not self.engine.has_schedulable_work:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                result = self.engine.step(max(self.clock.now(), last_end))
                for load in self.engine.take_remote_loads():
                    self._spawn(self._remote_load(load))
                self._holds_freed.set()  # a step frees the holds whose lease ran out
                await self.clock.sleep_until(result.end)
                last_end = result.end
                if self._on_kv_events is not None:
                    self._on_kv_events(self.engine.take_kv_events())
                for output in result.outputs:
                    self._deliver(output)
                await asyncio.sleep(0)  # let handlers run between back-to-back steps
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the engine is dead: fail everything, then stop serving
            self.dead_reason = f"engine loop failed: {exc!r}"
            logger.exception("engine_dead")
            for request_id in list(self._streams):
                self._deliver(
                    RequestOutput(request_id, (), FinishReason.ERROR, error=self.dead_reason)
                )
            if self._on_dead is not None:
                self._on_dead()

    async def _remote_load(self, load: RemoteLoad) -> None:
        start = self.clock.now()
        try:
            receipt = await self.transport.read(load.source)
        except KVTransferError as exc:
            output = self.engine.finish_remote_load(
                load.request_id, self.clock.now(), error=str(exc)
            )
        else:
            seconds = self.profile.kv_transfer_seconds(load.num_tokens)
            await self.clock.sleep_until(start + seconds)
            num_bytes = min(receipt.num_bytes, load.num_tokens * self.profile.kv_bytes_per_token)
            output = self.engine.finish_remote_load(
                load.request_id,
                self.clock.now(),
                transfer_seconds=seconds,
                transfer_bytes=num_bytes,
            )
        await self._notify_done(load.source)
        if output is not None:
            self._deliver(output)
        self._wake.set()

    async def _notify_done(self, source: RemotePrefill) -> None:
        try:
            await self.transport.done(source)
        except KVTransferError as exc:
            self.engine.stats.transfer.num_failed_notifications += 1
            logger.warning(
                "kv_done_notification_failed", remote_request_id=source.remote_request_id, error=exc
            )

    async def _heartbeat_loop(self) -> None:
        interval = self.engine.held.heartbeat_interval
        while True:
            await self.clock.sleep(interval)
            by_producer: dict[tuple[str, int], list[str]] = defaultdict(list)
            for request in list(self.engine.scheduler.waiting):
                if request.awaits_remote_kv and request.remote is not None:
                    key = (request.remote.remote_host, request.remote.remote_port)
                    by_producer[key].append(request.remote.remote_request_id)
            for (host, port), request_ids in by_producer.items():
                try:
                    await self.transport.heartbeat(host, port, request_ids)
                except KVTransferError as exc:
                    self.engine.stats.transfer.num_failed_notifications += 1
                    logger.warning("kv_heartbeat_failed", producer=f"{host}:{port}", error=exc)

    async def _expiry_loop(self) -> None:
        while True:
            await self.clock.sleep(1.0)
            if self.engine.expire_held(self.clock.now()):
                self._wake.set()
                self._holds_freed.set()

    def _deliver(self, output: RequestOutput) -> None:
        stream = self._streams.get(output.request_id)
        if stream is None:
            return
        if output.finished:
            del self._streams[output.request_id]
        stream.put_nowait(output)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
