"""KV events of the real engine and of the simulated pod, for the same requests: the
simulated pod must publish what vLLM publishes, batch by batch, field by field (the batch
times aside), and the orchestrator's precise index must learn exactly the blocks the real
pod holds.

A fresh real pod with 12 KV blocks of 32 tokens (384 tokens) and a simulated pod set up the
same way take six prompts one after another, with prefixes shared and more prompt blocks
than fit, so blocks are stored, hit and evicted; each answers 3 tokens, which completes no
block of generated tokens (the real model's tokens and the simulated ones differ). Both
pods' batches are then read back from their replay endpoints, from seq 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import zmq

from tandem.cluster import tiny_model
from tandem.discovery.endpoints import Endpoint
from tandem.kvcache.events import END_SEQ, EventBatch, KVEvent, KVEventsConfig, decode_batch
from tandem.kvcache.hashing import external_hash, hash_prompt_blocks
from tandem.kvcache.tokenizer import load_tokenizer
from tandem.orchestrator.kv_events import KVEventSubscriptions
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.scheduling.plugins.precise_prefix_cache_producer import (
    KV_EVENTS_PORT_LABEL,
    KV_EVENTS_REPLAY_PORT_LABEL,
    PrecisePrefixCacheProducer,
)
from tests.real.conftest import RealCluster, _real_cluster
from tests.real.test_conformance import sim_config
from tests.support.pd import MODEL, complete, words
from tests.support.servers import free_port, running_pod

BLOCKS = 12
MAX_MODEL_LEN = 256
PROMPTS = [
    words(100), words(100) + words(40, 5), words(150, 3), words(70, 9), words(120, 11),
    words(60, 13),
]  # fmt: skip
"""Prompt lengths (with the BOS token) of 101, 141, 151, 71, 121 and 61 tokens: none within
two tokens of a block boundary, so three generated tokens fill no block."""


@pytest.fixture(scope="module")
def events_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    yield from _real_cluster(
        tmp_path_factory.mktemp("kv-events"), prefill=0, decode=0, aggregated=1,
        pod_args=("--num-gpu-blocks-override", str(BLOCKS), "--max-model-len",
                  str(MAX_MODEL_LEN)),
    )  # fmt: skip


def replay(port: int) -> list[tuple[int, EventBatch]]:
    """Every batch the publisher on `port` buffers, from seq 0."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    batches: list[tuple[int, EventBatch]] = []
    try:
        dealer.send_multipart([b"", (0).to_bytes(8, "big")])
        while dealer.poll(10_000):
            frames = dealer.recv_multipart()
            if frames[-2] == END_SEQ:
                return batches
            batches.append((int.from_bytes(frames[-2], "big"), decode_batch(frames[-1])))
        raise AssertionError(f"no end of replay from port {port}")
    finally:
        dealer.close()
        context.term()


def run(url: str) -> None:
    for prompt in PROMPTS:
        response = complete(url, {"model": MODEL, "prompt": prompt, "max_tokens": 3})
        assert response.status_code == 200, response.text


def events(batches: list[tuple[int, EventBatch]]) -> list[tuple[KVEvent, ...]]:
    return [batch.events for _, batch in batches]


def pod_labels(cluster: RealCluster) -> dict[str, str]:
    endpoints = cluster.cluster.plan.orchestrator_config["endpoints"]
    assert isinstance(endpoints, list)
    labels: dict[str, str] = endpoints[0]["labels"]
    return labels


def test_the_simulated_pod_publishes_what_vllm_publishes(events_pod: RealCluster) -> None:
    replay_port = int(pod_labels(events_pod)[KV_EVENTS_REPLAY_PORT_LABEL])
    run(events_pod.component_url("pod-0"))
    real = replay(replay_port)

    sim_events, sim_replay = free_port(), free_port()
    config = sim_config(
        num_gpu_blocks=BLOCKS, max_model_len=MAX_MODEL_LEN,
        kv_events_config=KVEventsConfig(
            enable_kv_cache_events=True, endpoint=f"tcp://*:{sim_events}",
            replay_endpoint=f"tcp://*:{sim_replay}",
        ),
    )  # fmt: skip
    with running_pod(config) as url:
        run(url)
        simulated = replay(sim_replay)

    assert [seq for seq, _ in real] == list(range(len(real)))
    kinds = {type(e).__name__ for batch in events(real) for e in batch}
    assert kinds == {"BlockStored", "BlockRemoved"}  # the trace evicts
    assert events(simulated) == events(real)


def test_the_precise_index_learns_the_real_pods_blocks(events_pod: RealCluster) -> None:
    labels = pod_labels(events_pod)
    endpoint = Endpoint("pod-0", "127.0.0.1", events_pod.component("pod-0").port, labels)
    producer = PrecisePrefixCacheProducer.from_parameters(
        "precise",
        {"tokenizer": str(tiny_model.model_dir() / "tokenizer.json"),
         "tokenProcessorConfig": {"blockSize": 32}},
    )  # fmt: skip
    prompt = words(200, 17)
    tokens = load_tokenizer(tiny_model.model_dir() / "tokenizer.json").encode(prompt)
    expected = [external_hash(h) for h in hash_prompt_blocks(tokens, 32)]

    def learnt() -> int:
        return producer.index.match(expected, ["pod-0"], time.monotonic())["pod-0"]

    async def follow() -> None:
        subscriptions = KVEventSubscriptions(lambda: producer, GatewayMetrics(), time.monotonic)
        subscriptions.sync([endpoint])
        try:
            deadline = time.monotonic() + 30
            while not producer.index.authoritative("pod-0", time.monotonic()):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.to_thread(
                complete, events_pod.component_url("pod-0"),
                {"model": MODEL, "prompt": prompt, "max_tokens": 3},
            )  # fmt: skip
            while learnt() < len(expected):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await subscriptions.stop()

    asyncio.run(follow())
    # The prompt's blocks as named here, from the tokenizer, are the ones the engine
    # reported storing: the orchestrator names blocks as the engine does.
    assert learnt() == len(expected) >= 6
    assert KV_EVENTS_PORT_LABEL in labels
    state = producer.index.endpoint("pod-0")
    assert state is not None
    assert state.block_size == 32
