"""A KV event publisher whose every batch the test controls: sent, or kept back (as a
message a slow subscriber lost), and always buffered for replay, as vLLM's is."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import zmq

from tandem.kvcache.events import END_SEQ, EventBatch, KVEvent, encode_batch
from tests.support.servers import free_port


class FakePublisher:
    def __init__(self, topic: bytes = b"kv-events") -> None:
        self.port, self.replay_port = free_port(), free_port()
        self.topic = topic
        self._context = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(f"tcp://127.0.0.1:{self.port}")
        self._buffer: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_replay, daemon=True)
        self._thread.start()

    def publish(self, seq: int, *events: KVEvent, send: bool = True) -> None:
        payload = encode_batch(EventBatch(0.0, events, 0))
        with self._lock:
            self._buffer.append((seq, payload))
        if send:
            self._pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pub.close(linger=0)
        self._context.term()

    def _serve_replay(self) -> None:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(f"tcp://127.0.0.1:{self.replay_port}")
        try:
            while not self._stop.is_set():
                if not router.poll(50):
                    continue
                client, _, start = router.recv_multipart()
                first = int.from_bytes(start, "big")
                with self._lock:
                    buffered = [(s, p) for s, p in self._buffer if s >= first]
                for seq, payload in buffered:
                    router.send_multipart(
                        [client, b"", self.topic, seq.to_bytes(8, "big"), payload]
                    )
                router.send_multipart([client, b"", b"", END_SEQ, b""])
        finally:
            router.close(linger=0)


@contextmanager
def fake_publisher() -> Iterator[FakePublisher]:
    publisher = FakePublisher()
    try:
        yield publisher
    finally:
        publisher.close()
