"""Engine: stepping, chunked prefill, preemption, finish reasons, aborts and statistics."""

from __future__ import annotations

import random

import pytest

from tandem.simulator.engine import Engine
from tandem.simulator.request import FinishReason, RequestStatus
from tests.unit.engine_support import (
    STEP_S,
    make_engine,
    make_request,
    prompt_of,
    run_until_idle,
)


def test_empty_engine_step_takes_no_time() -> None:
    engine = make_engine()

    result = engine.step(5.0)

    assert result.outputs == ()
    assert result.start == result.end == 5.0
    assert not engine.has_schedulable_work


def test_duplicate_request_id_is_refused() -> None:
    engine = make_engine()
    engine.add_request(make_request("a", prompt_of(4)))

    with pytest.raises(ValueError, match="already in the engine"):
        engine.add_request(make_request("a", prompt_of(4)))


@pytest.mark.parametrize(
    ("prompt_len", "budget", "threshold", "prefill_per_step"),
    [
        pytest.param(10, 64, 0, [10], id="one-step"),
        pytest.param(10, 4, 0, [4, 4, 2], id="budget-4"),
        pytest.param(8, 4, 0, [4, 4], id="exact-chunks"),
        pytest.param(10, 64, 3, [3, 3, 3, 1], id="threshold-3"),
        pytest.param(1, 64, 0, [1], id="one-token-prompt"),
    ],
)
def test_chunked_prefill_samples_one_token_when_the_prompt_completes(
    prompt_len: int, budget: int, threshold: int, prefill_per_step: list[int]
) -> None:
    engine = make_engine(max_num_batched_tokens=budget, long_prefill_token_threshold=threshold)
    engine.add_request(make_request("a", prompt_of(prompt_len), max_tokens=3))

    now = 0.0
    for index, expected_tokens in enumerate(prefill_per_step):
        result = engine.step(now)
        now = result.end
        assert result.num_prefill_tokens == expected_tokens
        assert result.num_decode_seqs == 0
        last = index == len(prefill_per_step) - 1
        assert [len(o.new_token_ids) for o in result.outputs] == ([1] if last else [])

    decode = engine.step(now)
    assert (decode.num_prefill_tokens, decode.num_decode_seqs) == (0, 1)
    assert [len(o.new_token_ids) for o in decode.outputs] == [1]


def test_steps_take_model_time_from_the_cost_model() -> None:
    engine = make_engine(max_num_batched_tokens=4)
    engine.add_request(make_request("a", prompt_of(10), max_tokens=2))

    ends: list[float] = []
    now = 1.0
    while engine.has_schedulable_work:
        result = engine.step(now)
        assert result.start == now
        assert result.duration == pytest.approx(STEP_S)
        ends.append(result.end)
        now = result.end

    # 3 prefill chunks + 1 decode step, 10 ms each, back to back from t=1.
    assert ends == pytest.approx([1.0 + i * STEP_S for i in range(1, 5)])


@pytest.mark.parametrize(
    ("arrival_time", "start", "prompt_len", "budget", "expected_ttft"),
    [
        pytest.param(0.0, 0.0, 10, 64, 1 * STEP_S, id="one-step"),
        pytest.param(0.0, 0.0, 10, 4, 3 * STEP_S, id="three-chunks"),
        pytest.param(-0.5, 0.0, 10, 64, 0.5 + STEP_S, id="queued-before-start"),
        pytest.param(2.0, 2.25, 8, 4, 0.25 + 2 * STEP_S, id="late-start"),
    ],
)
def test_ttft_is_observed_in_model_time(
    arrival_time: float, start: float, prompt_len: int, budget: int, expected_ttft: float
) -> None:
    engine = make_engine(max_num_batched_tokens=budget)
    engine.add_request(make_request("a", prompt_of(prompt_len), arrival_time=arrival_time))

    run_until_idle(engine, now=start)

    assert engine.stats.ttft.count == 1
    assert engine.stats.ttft.total == pytest.approx(expected_ttft)


@pytest.mark.parametrize("max_tokens", [2, 5])
def test_inter_token_latency_and_e2e_latency_follow_the_steps(max_tokens: int) -> None:
    engine = make_engine()
    engine.add_request(make_request("a", prompt_of(8), max_tokens=max_tokens))

    run = run_until_idle(engine)

    stats = engine.stats
    assert run.end == pytest.approx(max_tokens * STEP_S)
    assert stats.inter_token_latency.count == max_tokens - 1
    assert stats.inter_token_latency.total == pytest.approx((max_tokens - 1) * STEP_S)
    assert stats.e2e_latency.total == pytest.approx(max_tokens * STEP_S)
    assert stats.time_per_output_token.total == pytest.approx(STEP_S)
    assert stats.generation_tokens == max_tokens


@pytest.mark.parametrize(
    ("max_tokens", "min_tokens", "eos_after", "reason", "num_tokens"),
    [
        pytest.param(4, 0, None, FinishReason.LENGTH, 4, id="length"),
        pytest.param(1, 0, None, FinishReason.LENGTH, 1, id="length-1"),
        pytest.param(4, 0, 2, FinishReason.STOP, 2, id="eos"),
        pytest.param(3, 0, 3, FinishReason.STOP, 3, id="eos-on-last-token"),
        pytest.param(6, 4, 1, FinishReason.STOP, 4, id="min-tokens-delays-eos"),
        pytest.param(3, 5, 1, FinishReason.LENGTH, 3, id="max-tokens-beats-min-tokens"),
        pytest.param(4, 2, 3, FinishReason.STOP, 3, id="eos-after-min-tokens"),
    ],
)
def test_finish_reasons(
    max_tokens: int,
    min_tokens: int,
    eos_after: int | None,
    reason: FinishReason,
    num_tokens: int,
) -> None:
    engine = make_engine()
    engine.add_request(
        make_request(
            "a", prompt_of(6), max_tokens=max_tokens, min_tokens=min_tokens, eos_after=eos_after
        )
    )

    run = run_until_idle(engine)

    assert run.reason("a") is reason
    assert len(run.tokens["a"]) == num_tokens
    assert run.finished["a"].num_prompt_tokens == 6
    assert engine.stats.request_success == {reason.value: 1}
    assert engine.kv_usage == 0.0
    assert engine.request("a") is None


def test_sampled_tokens_are_deterministic_and_in_the_sample_vocab() -> None:
    runs = []
    for _ in range(2):
        engine = make_engine()
        engine.add_request(make_request("a", prompt_of(6), max_tokens=8))
        runs.append(run_until_idle(engine).tokens["a"])

    assert runs[0] == runs[1]
    assert all(0 <= token < 1000 for token in runs[0])
    assert len(set(runs[0])) > 1


def test_fcfs_with_max_num_seqs() -> None:
    engine = make_engine(max_num_seqs=2)
    for request_id in ("a", "b", "c", "d"):
        engine.add_request(make_request(request_id, prompt_of(4, start=ord(request_id) * 10)))

    first = engine.step(0.0)

    assert sorted(o.request_id for o in first.outputs) == ["a", "b"]
    assert [r.request_id for r in engine.scheduler.running] == ["a", "b"]
    assert [r.request_id for r in engine.scheduler.waiting] == ["c", "d"]
    run = run_until_idle(engine, now=first.end)
    assert run.finish_order == ["a", "b", "c", "d"]
    # c and d only start once a and b have finished (4 steps each pair).
    assert run.end == pytest.approx(8 * STEP_S)


def _preemption_engine_run() -> tuple[list[str], list[str], int, dict[str, list[int]]]:
    """Three requests in 4 usable blocks; returns queues right after the first preemption."""
    engine = make_engine(num_gpu_blocks=5, max_num_seqs=2)
    for request_id, start, max_tokens in (("a", 100, 8), ("b", 200, 8), ("c", 300, 2)):
        engine.add_request(make_request(request_id, prompt_of(4, start), max_tokens=max_tokens))
    tokens: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    now = 0.0
    while engine.stats.num_preemptions == 0:
        result = engine.step(now)
        now = result.end
        for output in result.outputs:
            tokens[output.request_id].extend(output.new_token_ids)
    waiting = [r.request_id for r in engine.scheduler.waiting]
    running = [r.request_id for r in engine.scheduler.running]
    preempted = engine.request("b")
    assert preempted is not None
    assert preempted.status is RequestStatus.WAITING
    assert preempted.num_computed_tokens == 0
    assert preempted.blocks == []
    run = run_until_idle(engine, now=now)
    for request_id, new_tokens in run.tokens.items():
        tokens[request_id].extend(new_tokens)
    assert engine.kv_usage == 0.0
    assert all(run.reason(rid) is FinishReason.LENGTH for rid in "abc")
    assert engine.stats.request_success == {"length": 3}
    return waiting, running, engine.stats.num_preemptions, tokens


def test_preemption_recomputes_and_still_completes() -> None:
    waiting, running, num_preemptions, tokens = _preemption_engine_run()

    # The newest running request was preempted and went back to the head of the queue.
    assert waiting == ["b", "c"]
    assert running == ["a"]
    assert num_preemptions >= 1
    assert {rid: len(ids) for rid, ids in tokens.items()} == {"a": 8, "b": 8, "c": 2}


def test_preempted_request_produces_the_same_tokens_as_an_uninterrupted_one() -> None:
    _, _, _, preempted_tokens = _preemption_engine_run()
    roomy = make_engine()
    roomy.add_request(make_request("b", prompt_of(4, 200), max_tokens=8))

    assert run_until_idle(roomy).tokens["b"] == preempted_tokens["b"]


@pytest.mark.parametrize(
    ("steps_before_abort", "status_before"),
    [
        pytest.param(0, RequestStatus.WAITING, id="waiting"),
        pytest.param(1, RequestStatus.RUNNING, id="mid-prefill"),
        pytest.param(4, RequestStatus.RUNNING, id="decoding"),
    ],
)
def test_abort_frees_blocks_and_counts(
    steps_before_abort: int, status_before: RequestStatus
) -> None:
    engine = make_engine(max_num_batched_tokens=4)
    engine.add_request(make_request("a", prompt_of(10), max_tokens=20))
    now = 0.0
    for _ in range(steps_before_abort):
        now = engine.step(now).end
    request = engine.request("a")
    assert request is not None
    assert request.status is status_before

    output = engine.abort_request("a", now)

    assert output is not None
    assert output.finish_reason is FinishReason.ABORT
    assert engine.kv_usage == 0.0
    assert engine.stats.request_success == {"abort": 1}
    assert (engine.num_running, engine.num_waiting) == (0, 0)
    assert not engine.has_schedulable_work
    assert engine.abort_request("a", now) is None


def test_abort_of_unknown_request_returns_none() -> None:
    assert make_engine().abort_request("nope", 0.0) is None


@pytest.mark.parametrize(
    ("second_prompt", "expected_hit_tokens"),
    [
        # 12-token prompts in blocks of 4: the last token must be computed, so at most 2 blocks.
        pytest.param(prompt_of(12), 8, id="same-prompt"),
        pytest.param([*prompt_of(8), 1, 2, 3, 4], 8, id="two-shared-blocks"),
        pytest.param([*prompt_of(4), 1, 2, 3, 4, 5, 6, 7, 8], 4, id="one-shared-block"),
        pytest.param([*prompt_of(4), 1, 2, 3, 4], 4, id="shorter-prompt"),
        pytest.param([9, 9, 9, 9, *prompt_of(8, start=104)], 0, id="same-tail-other-parent"),
        pytest.param(prompt_of(12, start=500), 0, id="different"),
    ],
)
def test_prefix_cache_counters_and_prompt_token_sources(
    second_prompt: list[int], expected_hit_tokens: int
) -> None:
    engine = make_engine()
    engine.add_request(make_request("first", prompt_of(12)))
    run_until_idle(engine)
    engine.add_request(make_request("second", second_prompt))

    run = run_until_idle(engine)

    stats = engine.stats
    total_prompt = 12 + len(second_prompt)
    assert stats.prefix_cache_queries == total_prompt
    assert stats.prefix_cache_hits == expected_hit_tokens
    assert run.finished["second"].num_cached_tokens == expected_hit_tokens
    assert stats.prompt_tokens == total_prompt
    assert stats.prompt_tokens_by_source["local_cache_hit"] == expected_hit_tokens
    assert stats.prompt_tokens_by_source["local_compute"] == total_prompt - expected_hit_tokens
    assert stats.prompt_tokens_by_source["external_kv_transfer"] == 0
    assert sum(stats.prompt_tokens_by_source.values()) == stats.prompt_tokens


def test_prefix_cache_disabled_counts_no_hits() -> None:
    engine = make_engine(enable_prefix_caching=False)
    for request_id in ("a", "b"):
        engine.add_request(make_request(request_id, prompt_of(12)))
        run_until_idle(engine)

    assert engine.stats.prefix_cache_queries == 24
    assert engine.stats.prefix_cache_hits == 0


def test_prefix_hit_shortens_the_prefill() -> None:
    engine = make_engine(max_num_batched_tokens=4)
    engine.add_request(make_request("first", prompt_of(16), max_tokens=1))
    cold = run_until_idle(engine)
    engine.add_request(make_request("second", prompt_of(16), max_tokens=1))

    warm = run_until_idle(engine, now=cold.end)

    # Cold: 16 tokens in 4 chunks. Warm: 12 cached, the last 4 recomputed in one step.
    assert (cold.steps, warm.steps) == (4, 1)


def test_kv_usage_tracks_blocks_in_use() -> None:
    engine = make_engine(num_gpu_blocks=11)
    engine.add_request(make_request("a", prompt_of(8), max_tokens=3))

    engine.step(0.0)

    assert engine.kv_usage == pytest.approx(2 / 10)
    run_until_idle(engine, now=STEP_S)
    assert engine.kv_usage == 0.0


def _two_decoding(max_tokens_b: int = 12, num_gpu_blocks: int = 40, prompt_b: int = 6) -> Engine:
    engine = make_engine(num_gpu_blocks=num_gpu_blocks)
    engine.add_request(make_request("a", list(range(10)), max_tokens=30))
    engine.add_request(make_request("b", list(range(100, 100 + prompt_b)), max_tokens=max_tokens_b))
    engine.step(0.0)  # both prefill and sample their first token
    return engine


def _assert_same_state(planned: Engine, stepped: Engine) -> None:
    for request_id in ("a", "b"):
        stepped_request = stepped.request(request_id)
        planned_request = planned.request(request_id)
        assert (planned_request is None) == (stepped_request is None)
        if planned_request is None or stepped_request is None:
            continue
        assert planned_request.output_token_ids == stepped_request.output_token_ids
        assert len(planned_request.blocks) == len(stepped_request.blocks)
        assert planned_request.last_token_time == stepped_request.last_token_time
    assert planned.num_running == stepped.num_running
    assert planned.kv_usage == stepped.kv_usage
    assert planned.stats.generation_tokens == stepped.stats.generation_tokens
    assert planned.stats.inter_token_latency.count == stepped.stats.inter_token_latency.count
    assert planned.stats.iteration_tokens.count == stepped.stats.iteration_tokens.count
    assert planned.stats.request_success == stepped.stats.request_success


def test_a_decode_run_applies_what_single_steps_would_through_a_finish() -> None:
    stepped, planned = _two_decoding(), _two_decoding()
    run = planned.plan_decode_run(STEP_S, max_steps=100)
    assert run is not None
    # b samples its 12th and last token in the run's 11th step, a its 30th in the 29th.
    assert len(run.ends) == 29
    assert run.finish_steps == [10, 28]
    assert run.finishers == {10: [1], 28: [0]}
    assert run.seqs == [2] * 11 + [1] * 18

    clock, usages, running = STEP_S, [], []
    for _ in run.ends:
        result = stepped.step(clock)
        usages.append(stepped.kv_usage)  # a step's effects count from its start
        running.append(stepped.num_running)
        clock = result.end
    assert clock == run.ends[-1]
    assert [planned.decode_run_kv_usage(run, s + 1) for s in range(29)] == usages
    assert [run.num_running(s + 1) for s in range(29)] == running

    applied = planned.apply_decode_run(run, 29)
    assert [(out.request_id, len(out.new_token_ids)) for out, _ in applied] == [
        ("a", 29),
        ("b", 11),
    ]
    assert all(out.finished for out, _ in applied)
    assert applied[1][0].num_prompt_tokens == 6
    assert applied[1][1] == run.ends[:11]
    assert planned.num_running == 0
    assert planned.pool.num_free_blocks == planned.pool.capacity
    _assert_same_state(planned, stepped)


def test_a_decode_run_applies_its_finishers_first_and_the_rest_later() -> None:
    stepped, planned = _two_decoding(), _two_decoding()
    run = planned.plan_decode_run(STEP_S, max_steps=100)
    assert run is not None
    usages, clock = [], STEP_S
    for _ in range(20):
        clock = stepped.step(clock).end
        usages.append(stepped.kv_usage)
    early = planned.apply_decode_run(run, 11, run.finishers[10])
    assert [(out.request_id, out.finished) for out, _ in early] == [("b", True)]
    assert planned.stats.generation_tokens == 2  # step-wide statistics wait for the rest
    # From then on, the usage a scrape reads counts what is applied and what is not alike.
    assert [planned.decode_run_kv_usage(run, s) for s in range(11, 21)] == usages[10:]
    planned.apply_decode_run(run, 15)
    assert [planned.decode_run_kv_usage(run, s) for s in range(15, 21)] == usages[14:]
    planned.apply_decode_run(run, 20)
    _assert_same_state(planned, stepped)


def test_no_decode_run_while_a_waiting_request_would_be_admitted() -> None:
    engine = _two_decoding()
    engine.add_request(make_request("c", list(range(40, 50)), max_tokens=2))
    assert engine.plan_decode_run(STEP_S, max_steps=100) is None


def test_a_decode_run_ends_with_a_finish_that_frees_blocks_for_a_waiting_request() -> None:
    # Block size 4: a holds 3 blocks, b 8, 8 of 19 are free. c needs 10: it waits until b
    # finishes and frees its 11, while b's 11 steps and a's take 6 blocks.
    stepped = _two_decoding(num_gpu_blocks=20, prompt_b=30)
    planned = _two_decoding(num_gpu_blocks=20, prompt_b=30)
    for engine in (stepped, planned):
        engine.add_request(make_request("c", list(range(200, 240)), max_tokens=2))
    run = planned.plan_decode_run(STEP_S, max_steps=100)
    assert run is not None
    assert run.finish_steps == [10]
    assert len(run.ends) == 11
    planned.apply_decode_run(run, len(run.ends))
    clock = STEP_S
    for _ in run.ends:
        clock = stepped.step(clock).end
    _assert_same_state(planned, stepped)
    assert stepped.step(clock).num_prefill_tokens > 0  # c is admitted next


def test_a_decode_run_stops_before_the_free_blocks_run_out() -> None:
    # Block size 4: a holds 3 blocks, b 2, 4 of 9 are free: 10 steps fit, the 11th would not.
    stepped = _two_decoding(max_tokens_b=100, num_gpu_blocks=10)
    planned = _two_decoding(max_tokens_b=100, num_gpu_blocks=10)
    run = planned.plan_decode_run(STEP_S, max_steps=100)
    assert run is not None
    assert len(run.ends) == 10
    planned.apply_decode_run(run, 10)
    clock = STEP_S
    for _ in range(10):
        clock = stepped.step(clock).end
    _assert_same_state(planned, stepped)
    assert planned.pool.num_free_blocks == 0
    stepped.step(clock)
    assert stepped.stats.num_preemptions == 1


def test_the_steps_a_run_has_blocks_for_match_counting_them_one_by_one() -> None:
    rng = random.Random(11)
    for _ in range(300):
        free = rng.randrange(0, 12)
        engine = make_engine(num_gpu_blocks=free + 2)  # block size 4
        engine.pool.allocate(1)  # `free` blocks left
        held = [rng.randrange(1, 6) for _ in range(rng.randrange(1, 8))]
        computed = [h * 4 - rng.randrange(0, 4) for h in held]
        limits = [rng.randrange(1, 40) for _ in held]
        steps = rng.randrange(0, 40)

        run = list(zip(computed, held, limits, strict=True))
        growth = [
            sum(max(0, -(-(c + min(s, limit)) // 4) - h) for c, h, limit in run)
            for s in range(steps + 1)
        ]
        expected = max(s for s in range(steps + 1) if growth[s] <= free)
        assert engine._steps_with_free_blocks(computed, held, limits, steps) == expected
