"""Precise prefix-cache routing on loopback: the orchestrator follows each pod's KV events
(replaying what it missed), learns exactly the blocks a pod holds, forgets evicted ones, and
routes a shared prefix to the pod that holds it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
import yaml

from tandem.discovery.endpoints import ROLE_LABEL, Endpoint
from tandem.kvcache.events import BlockRemoved, BlockStored, KVEventsConfig
from tandem.kvcache.hashing import external_hash
from tandem.kvcache.tokenizer import SyntheticTokenizer
from tandem.orchestrator.app import create_app
from tandem.orchestrator.config import parse_orchestrator_config
from tandem.orchestrator.kv_events import KVEventSubscriptions
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.scheduling.plugins.precise_prefix_cache_producer import (
    KV_EVENTS_PORT_LABEL,
    KV_EVENTS_REPLAY_PORT_LABEL,
    PrecisePrefixCacheProducer,
)
from tandem.simulator.server import create_app as create_pod
from tests.integration.test_gateway import ready
from tests.support.kv_publisher import FakePublisher, fake_publisher
from tests.support.pd import MODEL, samples, words
from tests.support.schedulers import CONFIG_DIR
from tests.support.servers import free_port, pod_config, serve, wait_until


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def endpoint_for(publisher: FakePublisher) -> Endpoint:
    labels = {
        ROLE_LABEL: "both",
        KV_EVENTS_PORT_LABEL: str(publisher.port),
        KV_EVENTS_REPLAY_PORT_LABEL: str(publisher.replay_port),
    }
    return Endpoint("pod-0", "127.0.0.1", free_port(), labels)


def stored(*hashes: int) -> BlockStored:
    return BlockStored(hashes, None, tuple(range(16 * len(hashes))), 16)


async def test_the_subscription_replays_what_it_missed_and_mends_gaps() -> None:
    producer = PrecisePrefixCacheProducer.from_parameters("precise", {})
    metrics = GatewayMetrics()
    with fake_publisher() as publisher:
        publisher.publish(0, stored(1, 2, 3))  # before anyone subscribed: replayed
        subscriptions = KVEventSubscriptions(lambda: producer, metrics, time.monotonic)
        subscriptions.sync([endpoint_for(publisher)])
        index = producer.index
        try:
            assert await eventually(lambda: index.authoritative("pod-0", time.monotonic()))
            assert index.match([1, 2, 3], ["pod-0"], 0.0) == {"pod-0": 3}
            # Live from here: a batch that reaches the subscription live, not by replay.
            seq = 1
            publisher.publish(seq, stored(101))
            assert await eventually(lambda: index.match([101], ["pod-0"], 0.0)["pod-0"] == 1)
            seq += 1
            publisher.publish(seq, stored(4), BlockRemoved((3,)), send=False)  # lost
            publisher.publish(seq + 1, stored(5))
            assert await eventually(lambda: index.match([5], ["pod-0"], 0.0)["pod-0"] == 1)
        finally:
            await subscriptions.stop()

    assert index.match([1, 2, 3], ["pod-0"], 0.0) == {"pod-0": 2}  # 3 was evicted, in the gap
    assert index.match([4], ["pod-0"], 0.0) == {"pod-0": 1}
    assert metrics.kv_event_gaps.labels("pod-0")._value.get() == 1
    assert metrics.kv_event_replays.labels("pod-0", "synced")._value.get() == 2
    assert metrics.kv_event_batches.labels("pod-0")._value.get() >= 1  # some came live


def precise_scheduler() -> dict[str, Any]:
    """tandem.yaml with the precise index (no speculation, so what the index holds is
    exactly what the pods reported)."""
    document: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "tandem.yaml").read_text())
    document["plugins"].append(
        {"type": "precise-prefix-cache-producer", "parameters": {"speculativeIndexing": False}}
    )
    return document


def held_hashes(pod: Any) -> set[int]:
    """The block hashes a simulated pod's engine holds, as its events name them."""
    return {external_hash(h) for h in pod.state.pod.runner.engine.pool._cached}


def complete(url: str, prompt: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


def test_the_index_holds_exactly_what_each_pod_holds_and_routes_a_prefix_to_it() -> None:
    pod_apps, endpoints, pod_urls = [], [], []
    with ExitStack() as stack:
        for index in range(2):
            events_port, replay_port = free_port(), free_port()
            config = pod_config(
                time_scale=0.05, num_gpu_blocks=60,
                kv_events_config=KVEventsConfig(
                    enable_kv_cache_events=True, endpoint=f"tcp://*:{events_port}",
                    replay_endpoint=f"tcp://*:{replay_port}",
                ),
            )  # fmt: skip
            app = create_pod(config)
            pod_urls.append(stack.enter_context(serve(app, config.port)))
            pod_apps.append(app)
            endpoints.append({
                "name": f"pod-{index}", "host": "127.0.0.1", "port": config.port,
                "role": "both",
                "labels": {KV_EVENTS_PORT_LABEL: str(events_port),
                           KV_EVENTS_REPLAY_PORT_LABEL: str(replay_port)},
            })  # fmt: skip
        port = free_port()
        orchestrator = create_app(
            parse_orchestrator_config(
                {"endpoints": endpoints, "gateway": {"port": port}, "scrape": {"interval_s": 0.1},
                 "scheduler": precise_scheduler(), "seed": 7}
            )
        )  # fmt: skip
        url = stack.enter_context(serve(orchestrator, port))
        assert wait_until(lambda: ready(url))
        index = orchestrator.state.gateway.router.scheduler.precise.index

        def exact() -> bool:
            return all(index.held(f"pod-{i}") == held_hashes(pod_apps[i]) for i in range(2))

        assert wait_until(lambda: all(
            index.authoritative(f"pod-{i}", time.monotonic()) for i in range(2)
        ))  # fmt: skip
        # The prefix goes through this orchestrator to one pod: the approximate index
        # remembers it there. Then that pod evicts it (prompts sent to it directly), and
        # the other pod computes it (as another orchestrator replica could have sent it):
        # only the events tell.
        shared = words(400, offset=3)
        first = complete(url, shared + words(20, 500))
        first_pod = 0 if held_hashes(pod_apps[0]) else 1
        other = 1 - first_pod
        for i in range(5):
            complete(pod_urls[first_pod], words(300, offset=11 * i + 50))
        direct = complete(pod_urls[other], shared + words(20, 600))
        assert wait_until(exact)
        learnt = set(index.held(f"pod-{other}"))
        routed = complete(url, shared + words(20, 700))
        # Then the other pod evicts too: the index forgets.
        for i in range(5):
            complete(pod_urls[other], words(300, offset=13 * i + 80))
        assert wait_until(exact)
        counters = samples(url)

    assert first.status_code == direct.status_code == routed.status_code == 200
    shared_blocks = len(SyntheticTokenizer().encode(shared)) // 16
    assert len(learnt) >= shared_blocks
    assert routed.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16 * shared_blocks
    assert counters[f"tandem_picks_total{{endpoint=pod-{other},profile=decode}}"] == 1
    assert not learnt <= index.held(f"pod-{other}")  # evictions forgotten
    assert counters[f"tandem_precise_index_synced{{endpoint=pod-{other}}}"] == 1
