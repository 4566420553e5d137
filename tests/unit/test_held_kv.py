"""The KV connector's P/D contract between two in-process engines, and held-KV leases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tandem.errors import KVReadError
from tandem.pods.launch import KVLoadFailurePolicy
from tandem.simulator.engine import Engine
from tandem.simulator.kv_connector import HeldKV, RemotePrefill, wants_remote_decode
from tandem.simulator.request import FinishReason, RequestOutput
from tests.unit.engine_support import (
    BLOCK_SIZE,
    make_engine,
    make_request,
    prompt_of,
    run_until_idle,
)

PROMPT = prompt_of(10)
"""10 tokens: 3 blocks of 4, the last one partial."""
PRODUCE_PARAMS: dict[str, Any] = {"do_remote_decode": True, "do_remote_prefill": False}


def _producer() -> Engine:
    return make_engine(engine_id="prefill-0", side_channel_port=5601)


def _consumer(policy: KVLoadFailurePolicy = "fail") -> Engine:
    return make_engine(engine_id="decode-0", side_channel_port=5602, kv_load_failure_policy=policy)


def _produce(
    producer: Engine, request_id: str = "p-1", prompt: list[int] = PROMPT, now: float = 0.0
) -> tuple[RequestOutput, float]:
    """Prefill `prompt` for a remote decoder; returns the finished output and the end time."""
    producer.add_request(
        make_request(request_id, prompt, max_tokens=1, kv_transfer_params=dict(PRODUCE_PARAMS))
    )
    run = run_until_idle(producer, now=now)
    return run.finished[request_id], run.end


def _params(output: RequestOutput) -> dict[str, Any]:
    assert output.kv_transfer_params is not None
    return output.kv_transfer_params


def test_producer_returns_vllm_kv_transfer_params_and_holds_blocks() -> None:
    producer = _producer()

    output, end = _produce(producer)

    assert output.finish_reason is FinishReason.LENGTH
    params = _params(output)
    held = producer.held.requests["p-1"]
    held_ids = [block.block_id for block in held.blocks]
    assert len(held_ids) == 3
    assert 0 not in held_ids
    assert params == {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [held_ids],
        "remote_engine_id": "prefill-0",
        "remote_request_id": "p-1",
        "remote_host": "127.0.0.7",
        "remote_port": 5601,
        "tp_size": 1,
        "dcp_size": 1,
        "pp_size": 1,
        "remote_num_tokens": 10,
        "remote_blocks_expiry_time": None,
        "transfer_mode": "pull",
        "remote_prefill_cached_tokens": 0,
    }
    assert producer.kv_usage == pytest.approx(3 / producer.pool.capacity)
    assert held.expiry == pytest.approx(end + 30)


@pytest.mark.parametrize(
    ("max_tokens", "eos_after", "reason"),
    [
        (1, None, FinishReason.LENGTH),
        (6, None, FinishReason.LENGTH),
        (6, 2, FinishReason.STOP),
    ],
)
def test_producer_holds_only_the_prompt_blocks(
    max_tokens: int, eos_after: int | None, reason: FinishReason
) -> None:
    producer = _producer()
    producer.add_request(
        make_request(
            "p-1",
            prompt_of(8),
            max_tokens=max_tokens,
            eos_after=eos_after,
            kv_transfer_params=dict(PRODUCE_PARAMS),
        )
    )

    output = run_until_idle(producer).finished["p-1"]

    assert output.finish_reason is reason
    assert len(_params(output)["remote_block_ids"][0]) == 2
    assert producer.kv_usage == pytest.approx(2 / producer.pool.capacity)


def test_producer_reports_its_own_prefix_cache_hit() -> None:
    producer = _producer()
    producer.add_request(make_request("warm", PROMPT))
    run_until_idle(producer)

    output, _ = _produce(producer)

    assert _params(output)["remote_prefill_cached_tokens"] == 8
    assert output.num_cached_tokens == 8


def test_pd_round_trip_between_two_engines() -> None:
    producer, consumer = _producer(), _consumer()
    produced, now = _produce(producer)
    params = _params(produced)
    consumer.add_request(make_request("d-1", PROMPT, max_tokens=4, kv_transfer_params=params))

    waiting = consumer.step(now)

    assert waiting.outputs == ()
    assert waiting.num_prefill_tokens == 0
    assert not consumer.has_schedulable_work
    loads = consumer.take_remote_loads()
    assert consumer.take_remote_loads() == []
    assert len(loads) == 1
    (load,) = loads
    assert load.request_id == "d-1"
    assert load.num_tokens == 10
    assert load.source.remote_engine_id == "prefill-0"
    assert load.source.remote_block_ids == (tuple(params["remote_block_ids"][0]),)
    assert consumer.kv_usage == pytest.approx(3 / consumer.pool.capacity)

    held = producer.read_held(load.source.remote_request_id, load.source.remote_block_ids[0], now)
    assert (held.num_tokens, held.reads) == (10, 1)
    done = consumer.finish_remote_load(
        "d-1", now + 0.004, transfer_seconds=0.004, transfer_bytes=10 * 4096
    )
    assert done is None
    assert consumer.has_schedulable_work

    first = consumer.step(now + 0.004)
    # Only the last prompt token is recomputed, to get logits to sample from.
    assert first.num_prefill_tokens == 1
    assert [len(o.new_token_ids) for o in first.outputs] == [1]
    run = run_until_idle(consumer, now=first.end)
    assert run.reason("d-1") is FinishReason.LENGTH
    assert len(run.tokens["d-1"]) == 3
    assert run.finished["d-1"].kv_transfer_params is None

    stats = consumer.stats
    # Every prompt token the local cache lacked counts as transferred (vLLM's NIXL connector
    # reports len(prompt) - local hits as external), even though the last one is recomputed.
    assert stats.prompt_tokens_by_source["external_kv_transfer"] == 10
    assert stats.prompt_tokens_by_source["local_cache_hit"] == 0
    assert stats.prompt_tokens == 10
    transfer = stats.transfer
    assert (transfer.xfer_time.count, transfer.xfer_time.total) == (1, pytest.approx(0.004))
    assert transfer.bytes_transferred.total == 10 * 4096
    assert transfer.num_descriptors.total == 3
    assert transfer.num_failed_transfers == 0
    assert consumer.kv_usage == 0.0

    assert producer.kv_usage > 0.0
    assert producer.release_held("p-1") is True
    assert producer.kv_usage == 0.0
    assert producer.release_held("p-1") is False


def test_consumer_loads_only_what_its_prefix_cache_lacks() -> None:
    producer, consumer = _producer(), _consumer()
    produced, now = _produce(producer)
    consumer.add_request(make_request("local", PROMPT))
    now = run_until_idle(consumer, now=now).end
    consumer.add_request(
        make_request("d-1", PROMPT, max_tokens=2, kv_transfer_params=_params(produced))
    )

    consumer.step(now)

    (load,) = consumer.take_remote_loads()
    # Two full blocks (8 tokens) were already cached locally.
    assert load.num_tokens == 2
    consumer.finish_remote_load("d-1", now, transfer_seconds=0.001, transfer_bytes=2 * 4096)
    run = run_until_idle(consumer, now=now)
    assert len(run.tokens["d-1"]) == 2
    by_source = consumer.stats.prompt_tokens_by_source
    # The remote request hit 8 tokens locally and loaded the other 2.
    assert by_source["local_cache_hit"] == 8
    assert by_source["external_kv_transfer"] == 2
    assert consumer.stats.prefix_cache_hits == 8


@pytest.mark.parametrize("prompt_len", [2, 4, 5, 16])
def test_round_trip_counts_the_whole_prompt_as_transferred(prompt_len: int) -> None:
    producer, consumer = _producer(), _consumer()
    prompt = prompt_of(prompt_len)
    produced, now = _produce(producer, prompt=prompt)
    consumer.add_request(make_request("d-1", prompt, kv_transfer_params=_params(produced)))
    consumer.step(now)
    (load,) = consumer.take_remote_loads()
    producer.read_held(load.source.remote_request_id, load.source.remote_block_ids[0], now)
    consumer.finish_remote_load("d-1", now)

    run = run_until_idle(consumer, now=now)

    assert len(run.tokens["d-1"]) == 4
    assert consumer.stats.prompt_tokens_by_source["external_kv_transfer"] == prompt_len
    assert consumer.stats.prompt_tokens_by_source["local_cache_hit"] == 0


def test_recomputed_last_token_stays_counted_as_transferred() -> None:
    """vLLM fixes the split at admission (PrefillStats.set): the last prompt token is
    recomputed after the load but stays under external_kv_transfer
    (vllm-project/vllm: vllm/v1/metrics/stats.py, vllm/v1/core/sched/scheduler.py)."""
    producer, consumer = _producer(), _consumer()
    produced, now = _produce(producer)
    consumer.add_request(make_request("d-1", PROMPT, kv_transfer_params=_params(produced)))
    consumer.step(now)
    consumer.take_remote_loads()
    consumer.finish_remote_load("d-1", now)

    first = consumer.step(now)

    assert first.num_prefill_tokens == 1
    assert consumer.stats.prompt_tokens_by_source["local_compute"] == 0
    assert consumer.stats.prompt_tokens_by_source["external_kv_transfer"] == len(PROMPT)


def test_one_token_prompt_round_trip_completes() -> None:
    producer, consumer = _producer(), _consumer()
    produced, now = _produce(producer, prompt=[5])
    consumer.add_request(make_request("d-1", [5], kv_transfer_params=_params(produced)))
    consumer.step(now)
    (load,) = consumer.take_remote_loads()
    consumer.finish_remote_load(load.request_id, now)

    run = run_until_idle(consumer, now=now)

    assert consumer.take_remote_loads() == []
    assert len(run.tokens["d-1"]) == 4


def _start_consumer_load(consumer: Engine, producer: Engine) -> float:
    produced, now = _produce(producer)
    consumer.add_request(
        make_request("d-1", PROMPT, max_tokens=4, kv_transfer_params=_params(produced))
    )
    consumer.step(now)
    assert len(consumer.take_remote_loads()) == 1
    return now


def test_failed_load_with_policy_fail_ends_the_request_with_error() -> None:
    producer, consumer = _producer(), _consumer("fail")
    now = _start_consumer_load(consumer, producer)

    output = consumer.finish_remote_load("d-1", now, error="connection reset")

    assert output is not None
    assert output.finish_reason is FinishReason.ERROR
    assert output.error is not None
    assert "connection reset" in output.error
    assert consumer.stats.transfer.num_failed_transfers == 1
    assert consumer.stats.request_success == {"error": 1}
    assert consumer.kv_usage == 0.0
    assert (consumer.num_running, consumer.num_waiting) == (0, 0)
    assert consumer.request("d-1") is None


def test_failed_load_with_policy_recompute_prefills_locally() -> None:
    producer, consumer = _producer(), _consumer("recompute")
    now = _start_consumer_load(consumer, producer)

    assert consumer.finish_remote_load("d-1", now, error="connection reset") is None
    run = run_until_idle(consumer, now=now)

    assert run.reason("d-1") is FinishReason.LENGTH
    assert len(run.tokens["d-1"]) == 4
    assert consumer.stats.transfer.num_failed_transfers == 1
    assert consumer.stats.prompt_tokens_by_source["local_compute"] == 10
    assert consumer.stats.prompt_tokens_by_source["external_kv_transfer"] == 0
    assert consumer.take_remote_loads() == []
    assert consumer.kv_usage == 0.0


def test_finish_remote_load_for_an_unknown_request_is_ignored() -> None:
    assert _consumer().finish_remote_load("nope", 0.0) is None


def test_aborting_a_request_waiting_for_remote_kv_frees_its_blocks() -> None:
    producer, consumer = _producer(), _consumer()
    now = _start_consumer_load(consumer, producer)

    output = consumer.abort_request("d-1", now)

    assert output is not None
    assert output.finish_reason is FinishReason.ABORT
    assert consumer.kv_usage == 0.0
    assert consumer.finish_remote_load("d-1", now) is None


@pytest.mark.parametrize("lease_offset", [30.0, 31.0, 100.0])
def test_held_blocks_expire_after_the_lease(lease_offset: float) -> None:
    producer = _producer()
    _, end = _produce(producer)

    assert producer.expire_held(end + 29.9) == 0
    assert producer.kv_usage > 0.0
    assert producer.expire_held(end + lease_offset) == 1

    assert producer.kv_usage == 0.0
    assert producer.stats.transfer.num_kv_expired_reqs == 1
    assert producer.held.requests == {}
    with pytest.raises(KVReadError, match="released or expired"):
        producer.read_held("p-1", (1,), end + lease_offset)


def test_step_expires_held_blocks() -> None:
    producer = _producer()
    _, end = _produce(producer)

    producer.step(end + 30)

    assert producer.kv_usage == 0.0
    assert producer.stats.transfer.num_kv_expired_reqs == 1


@pytest.mark.parametrize(
    ("heartbeat_at", "expected_expiry"),
    [
        # expiry = max(old, now + 30 * 2 // 3) = max(30, now + 20)
        (0.0, 30.0),
        (5.0, 30.0),
        (10.0, 30.0),
        (15.0, 35.0),
        (29.0, 49.0),
    ],
)
def test_heartbeat_extends_the_lease(heartbeat_at: float, expected_expiry: float) -> None:
    producer = _producer()
    _, end = _produce(producer)

    producer.heartbeat_held(["p-1", "unknown"], end + heartbeat_at)

    expiry = producer.held.requests["p-1"].expiry
    assert expiry == pytest.approx(end + expected_expiry)
    assert producer.expire_held(expiry - 0.01) == 0
    assert producer.expire_held(expiry) == 1


def test_held_kv_heartbeat_semantics() -> None:
    held = HeldKV(lease_duration=30)
    held.hold("r", [], num_tokens=4, now=100.0)

    assert held.heartbeat_interval == 5.0
    assert held.heartbeat("r", 120.0) is True
    assert held.requests["r"].expiry == 140.0
    assert held.heartbeat("missing", 120.0) is False


def test_read_after_release_raises() -> None:
    producer = _producer()
    output, end = _produce(producer)
    block_ids = tuple(_params(output)["remote_block_ids"][0])
    producer.release_held("p-1")

    with pytest.raises(KVReadError, match="released or expired"):
        producer.read_held("p-1", block_ids, end)


@pytest.mark.parametrize(
    ("offset", "block_ids_of", "error"),
    [
        pytest.param(30.0, lambda ids: ids, "expired", id="lease-over"),
        pytest.param(0.0, lambda ids: (*ids[:-1], 0), "do not match", id="wrong-block"),
        pytest.param(0.0, lambda ids: (), "do not match", id="no-blocks"),
        pytest.param(0.0, lambda ids: (*ids, 99), "do not match", id="too-many"),
    ],
)
def test_invalid_reads_raise(
    offset: float,
    block_ids_of: Callable[[tuple[int, ...]], tuple[int, ...]],
    error: str,
) -> None:
    producer = _producer()
    output, end = _produce(producer)
    block_ids = tuple(_params(output)["remote_block_ids"][0])

    with pytest.raises(KVReadError, match=error):
        producer.read_held("p-1", block_ids_of(block_ids), end + offset)


def test_read_of_a_prefix_of_the_held_blocks_succeeds() -> None:
    producer = _producer()
    output, end = _produce(producer)
    block_ids = tuple(_params(output)["remote_block_ids"][0])

    held = producer.read_held("p-1", block_ids[:2], end + 29.9)

    assert held.reads == 1


@pytest.mark.parametrize("steps_before_abort", [0, 1, 2])
def test_aborted_remote_decode_request_holds_nothing(steps_before_abort: int) -> None:
    producer = make_engine(engine_id="prefill-0", max_num_batched_tokens=BLOCK_SIZE)
    producer.add_request(
        make_request("p-1", PROMPT, max_tokens=1, kv_transfer_params=dict(PRODUCE_PARAMS))
    )
    now = 0.0
    for _ in range(steps_before_abort):
        now = producer.step(now).end

    output = producer.abort_request("p-1", now)

    assert output is not None
    assert output.finish_reason is FinishReason.ABORT
    assert output.kv_transfer_params is None
    assert producer.held.requests == {}
    assert producer.kv_usage == 0.0


VALID_CONSUMER_PARAMS: dict[str, Any] = {
    "do_remote_prefill": True,
    "remote_engine_id": "prefill-0",
    "remote_request_id": "p-1",
    "remote_host": "127.0.0.7",
    "remote_port": 5601,
    "remote_block_ids": [[1, 2, 3]],
}


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(None, id="none"),
        pytest.param({}, id="empty"),
        pytest.param({**VALID_CONSUMER_PARAMS, "do_remote_prefill": False}, id="not-remote"),
        pytest.param(
            {k: v for k, v in VALID_CONSUMER_PARAMS.items() if k != "remote_block_ids"},
            id="no-block-ids",
        ),
        pytest.param({**VALID_CONSUMER_PARAMS, "remote_block_ids": []}, id="empty-block-ids"),
        pytest.param({**VALID_CONSUMER_PARAMS, "remote_host": None}, id="no-host"),
        pytest.param(
            {k: v for k, v in VALID_CONSUMER_PARAMS.items() if k != "remote_engine_id"},
            id="no-engine-id",
        ),
    ],
)
def test_invalid_remote_prefill_params_parse_to_none(params: dict[str, Any] | None) -> None:
    assert RemotePrefill.parse(params) is None


@pytest.mark.parametrize(
    "block_ids",
    [pytest.param([[1, 2, 3]], id="nested"), pytest.param([1, 2, 3], id="flat")],
)
def test_valid_remote_prefill_params_parse(block_ids: list[Any]) -> None:
    params = {**VALID_CONSUMER_PARAMS, "remote_block_ids": block_ids, "tp_size": None}

    remote = RemotePrefill.parse(params)

    assert remote is not None
    assert remote.remote_block_ids == ((1, 2, 3),)
    assert remote.num_blocks == 3
    assert remote.tp_size == 1
    assert (remote.remote_host, remote.remote_port) == ("127.0.0.7", 5601)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, False),
        ({}, False),
        ({"do_remote_decode": False}, False),
        ({"do_remote_decode": True}, True),
    ],
)
def test_wants_remote_decode(params: dict[str, Any] | None, expected: bool) -> None:
    assert wants_remote_decode(params) is expected


def test_consumer_with_invalid_params_prefills_locally() -> None:
    consumer = _consumer()
    params = {k: v for k, v in VALID_CONSUMER_PARAMS.items() if k != "remote_block_ids"}
    consumer.add_request(make_request("d-1", PROMPT, kv_transfer_params=params))

    run = run_until_idle(consumer)

    assert consumer.take_remote_loads() == []
    assert len(run.tokens["d-1"]) == 4
    assert consumer.stats.prompt_tokens_by_source["local_compute"] == 10
