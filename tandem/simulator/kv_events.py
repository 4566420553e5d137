"""The simulated pod's KV event publisher: vLLM's `ZmqEventPublisher`, on the pod's loop.

After every engine step that stored or evicted blocks, one batch goes out on a ZMQ PUB
socket as `[topic, seq, payload]` (`tandem.kvcache.events`), and into a buffer of the last
`buffer_steps` batches. With a `replay_endpoint`, a ROUTER socket answers a subscriber that
missed batches: `[b"", start_seq]` in, every buffered batch from `start_seq` out, then the
end marker. A subscriber too slow for the high-water mark loses batches, as with vLLM: it
sees the gap in `seq` and replays.

One difference from vLLM: a wildcard endpoint (`tcp://*:5557`) binds the address the pod
serves HTTP on, not every interface, so pods serving on 127.0.0.1 publish on 127.0.0.1 only
(a pod serving on 0.0.0.0, as on Kubernetes, binds every interface as vLLM does).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence

import zmq
import zmq.asyncio

from tandem.kvcache.events import END_SEQ, EventBatch, KVEvent, KVEventsConfig, encode_batch
from tandem.logs import EventLog

logger = EventLog(__name__)


def _binds(endpoint: str) -> bool:
    """vLLM's rule: wildcard hosts and ipc/inproc endpoints bind, others connect."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


def bind_address(endpoint: str, host: str | None) -> str:
    """Where a binding endpoint binds: a wildcard TCP host becomes `host`, the pod's own
    serving address (unless that is a wildcard too, or None)."""
    if host is None or host in ("0.0.0.0", "::", "*") or not endpoint.startswith("tcp://*:"):
        return endpoint
    address = f"[{host}]" if ":" in host else host
    return endpoint.replace("tcp://*:", f"tcp://{address}:", 1)


class KVEventPublisher:
    """Publishes KV event batches; `start` and `stop` on the pod's event loop."""

    def __init__(
        self,
        config: KVEventsConfig,
        wall_clock: Callable[[], float] = time.time,
        *,
        host: str | None = None,
    ) -> None:
        """`host`: the address the pod serves on, which wildcard endpoints bind."""
        self.config = config
        self._host = host
        self._wall_clock = wall_clock
        self._topic = config.topic.encode()
        self._seq = itertools.count()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._context: zmq.asyncio.Context | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._replay: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._context = zmq.asyncio.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.set_hwm(self.config.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        endpoint = self.config.endpoint
        if _binds(endpoint):
            endpoint = bind_address(endpoint, self._host)
            self._pub.bind(endpoint)
        else:
            self._pub.connect(endpoint)
        replay = self.config.replay_endpoint
        if replay is not None:
            replay = bind_address(replay, self._host)
            self._replay = self._context.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.bind(replay)
            self._replay_task = asyncio.create_task(self._serve_replay(), name="kv-replay")
        logger.info(
            "kv_events_publishing", endpoint=endpoint, replay=replay, topic=self.config.topic
        )

    async def stop(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        for socket in (self._pub, self._replay):
            if socket is not None:
                socket.close(linger=0)
        if self._context is not None:
            self._context.term()

    def publish(self, events: Sequence[KVEvent]) -> None:
        """Send one step's events as a batch (nothing when there are none)."""
        if not events or self._pub is None:
            return
        seq = next(self._seq)
        payload = encode_batch(EventBatch(self._wall_clock(), tuple(events), 0))
        self._buffer.append((seq, payload))
        try:
            self._pub.send_multipart(
                [self._topic, seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK
            )
        except zmq.Again:  # past the high-water mark: subscribers replay the gap
            self.dropped += 1

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                logger.warning("kv_replay_request_invalid", frames=len(frames))
                continue
            client, _, start = frames
            start_seq = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await self._replay.send_multipart(
                        [client, b"", self._topic, seq.to_bytes(8, "big"), payload]
                    )
            await self._replay.send_multipart([client, b"", b"", END_SEQ, b""])
