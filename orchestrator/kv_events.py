"""Following every endpoint's KV events into the precise prefix index.

With a `precise-prefix-cache-producer` configured, one task per endpoint subscribes to the
pod's KV event publisher (ZMQ SUB, `tandem.kvcache.events`) as discovery adds it and stops as
discovery removes it:

1. subscribe (live batches queue up from now on);
2. ask the pod's replay endpoint for every buffered batch from seq 0, and rebuild the
   endpoint's entries from them (`PreciseIndex.resync`); without a replay endpoint the
   stream counts only if the first live batch is seq 0;
3. apply live batches in order; one that skips a seq triggers a replay from the first
   missing one, and a stream that cannot be mended is dropped and resubscribed.

A pod that restarts starts again at seq 0, which clears its entries. Nothing here runs on a
request path; the index is read by scheduling cycles on the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import zmq
import zmq.asyncio

from tandem.discovery.endpoints import Endpoint
from tandem.errors import EventFormatError
from tandem.kvcache.events import END_SEQ, EventBatch, decode_batch, decode_message
from tandem.logs import EventLog
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.scheduling.framework import PreciseMatcher

logger = EventLog(__name__)

REPLAY_TIMEOUT_S = 5.0
RETRY_S = 1.0


class KVEventSubscriptions:
    """One subscription task per endpoint, while the scheduler has a precise index."""

    def __init__(
        self,
        precise: Callable[[], PreciseMatcher | None],
        metrics: GatewayMetrics,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._precise = precise
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._context = zmq.asyncio.Context()
        self._tasks: dict[str, tuple[Endpoint, asyncio.Task[None]]] = {}

    def sync(self, endpoints: list[Endpoint]) -> None:
        """Follow exactly these endpoints (none without a precise index)."""
        wanted = {e.name: e for e in endpoints} if self._precise() is not None else {}
        for name in list(self._tasks):
            endpoint, task = self._tasks[name]
            if wanted.get(name) != endpoint:
                task.cancel()
                del self._tasks[name]
        for name, endpoint in wanted.items():
            if name not in self._tasks:
                task = asyncio.create_task(self._follow(endpoint), name=f"kv-events-{name}")
                self._tasks[name] = (endpoint, task)

    async def stop(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._context.term()

    async def _follow(self, endpoint: Endpoint) -> None:
        while True:
            precise = self._precise()
            if precise is None:
                return
            try:
                await self._subscribe(endpoint, precise)
            except (zmq.ZMQError, EventFormatError) as exc:
                logger.warning("kv_events_failed", endpoint=endpoint.name, error=repr(exc))
            precise.index.desync(endpoint.name)
            self._metrics.kv_events_resubscribes.labels(endpoint.name).inc()
            await asyncio.sleep(RETRY_S)

    async def _subscribe(self, endpoint: Endpoint, precise: PreciseMatcher) -> None:
        """Subscribe, catch up from the replay buffer, then apply live batches; returns
        when the stream broke beyond repair."""
        address = precise.events_endpoint(endpoint)
        replay = precise.replay_endpoint(endpoint)
        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, precise.topic)
        socket.connect(address)
        index = precise.index
        index.add_endpoint(endpoint.name)
        logger.info("kv_events_subscribed", endpoint=endpoint.name, address=address)
        try:
            if replay is not None and not await self._catch_up(endpoint, replay, 0, precise):
                return
            while True:
                message = decode_message(await socket.recv_multipart())
                received = self._wall_clock()
                self._metrics.kv_event_lag.observe(max(0.0, received - message.batch.ts))
                result = index.apply(endpoint.name, message.seq, message.batch, self._clock())
                if result.applied:
                    self._metrics.kv_event_batches.labels(endpoint.name).inc()
                if result.gap_from is None:
                    continue
                self._metrics.kv_event_gaps.labels(endpoint.name).inc()
                logger.warning(
                    "kv_events_gap",
                    endpoint=endpoint.name,
                    missing_from=result.gap_from,
                    got=message.seq,
                )
                if replay is None or not await self._catch_up(
                    endpoint, replay, result.gap_from, precise
                ):
                    return
                # The batch that revealed the gap may be newer than the replay's last.
                index.apply(endpoint.name, message.seq, message.batch, self._clock())
        finally:
            socket.close(linger=0)

    async def _catch_up(
        self, endpoint: Endpoint, address: str, start: int, precise: PreciseMatcher
    ) -> bool:
        """Replay buffered batches from `start` into the index; whether the endpoint is
        synchronised after it."""
        batches = await self._replay(address, start)
        if batches is None:
            self._metrics.kv_event_replays.labels(endpoint.name, "failed").inc()
            return False
        synced = precise.index.resync(endpoint.name, batches, self._clock())
        self._metrics.kv_event_replays.labels(
            endpoint.name, "synced" if synced else "history_lost"
        ).inc()
        logger.info(
            "kv_events_replayed",
            endpoint=endpoint.name,
            start=start,
            batches=len(batches),
            synced=synced,
        )
        return synced

    async def _replay(self, address: str, start: int) -> list[tuple[int, EventBatch]] | None:
        """Every batch the publisher still buffers from `start`, or None if it did not
        answer in time."""
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(address)
        batches: list[tuple[int, EventBatch]] = []
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            async with asyncio.timeout(REPLAY_TIMEOUT_S):
                while True:
                    frames = await dealer.recv_multipart()
                    # [b"", topic, seq, payload]; older releases send no topic frame.
                    body = frames[1:]
                    seq_frame = body[-2] if len(body) >= 2 else b""
                    if seq_frame == END_SEQ:
                        return batches
                    batches.append((int.from_bytes(seq_frame, "big"), decode_batch(body[-1])))
        except TimeoutError:
            return None
        finally:
            dealer.close(linger=0)
