"""BatchScheduler: FCFS admission, max_num_seqs, the token budget, chunked prefill, preemption."""

from __future__ import annotations

import pytest

from tandem.kvcache.hashing import hash_prompt_blocks
from tandem.simulator.block_pool import BlockPool
from tandem.simulator.request import EngineRequest, RequestStatus
from tandem.simulator.scheduler import BatchingConfig, BatchScheduler, Schedule

BLOCK_SIZE = 4


def _scheduler(
    *,
    num_gpu_blocks: int = 64,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 64,
    long_prefill_token_threshold: int = 0,
) -> BatchScheduler:
    config = BatchingConfig(
        block_size=BLOCK_SIZE,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        long_prefill_token_threshold=long_prefill_token_threshold,
    )
    return BatchScheduler(config, BlockPool(num_gpu_blocks))


def _enqueue(scheduler: BatchScheduler, request_id: str, prompt_len: int) -> EngineRequest:
    start = 1000 * (len(scheduler.waiting) + len(scheduler.running) + 1)
    prompt = list(range(start, start + prompt_len))
    request = EngineRequest(request_id, prompt, max_tokens=16, arrival_time=0.0)
    request.block_hashes = hash_prompt_blocks(prompt, BLOCK_SIZE)
    scheduler.waiting.append(request)
    return request


def _apply(schedule: Schedule) -> None:
    """What the engine does with a schedule, minus timing: advance, and sample at prompt end."""
    for chunk in schedule.chunks:
        completes = chunk.completes_prompt
        chunk.request.num_computed_tokens += chunk.num_tokens
        if completes:
            chunk.request.output_token_ids.append(7)


def _chunk_sizes(schedule: Schedule) -> list[tuple[str, int]]:
    return [(chunk.request.request_id, chunk.num_tokens) for chunk in schedule.chunks]


def test_admission_is_first_come_first_served() -> None:
    scheduler = _scheduler()
    for request_id in ("a", "b", "c"):
        _enqueue(scheduler, request_id, 5)

    schedule = scheduler.schedule()

    assert _chunk_sizes(schedule) == [("a", 5), ("b", 5), ("c", 5)]
    assert [r.request_id for r in scheduler.running] == ["a", "b", "c"]
    assert all(r.status is RequestStatus.RUNNING for r in scheduler.running)
    assert not scheduler.waiting


@pytest.mark.parametrize(("max_num_seqs", "admitted"), [(1, 1), (2, 2), (3, 3), (8, 5)])
def test_max_num_seqs_caps_running_requests(max_num_seqs: int, admitted: int) -> None:
    scheduler = _scheduler(max_num_seqs=max_num_seqs)
    ids = ["r0", "r1", "r2", "r3", "r4"]
    for request_id in ids:
        _enqueue(scheduler, request_id, 4)

    for _ in range(3):
        _apply(scheduler.schedule())

    assert [r.request_id for r in scheduler.running] == ids[:admitted]
    assert [r.request_id for r in scheduler.waiting] == ids[admitted:]


@pytest.mark.parametrize(
    ("prompt_lens", "budget", "threshold", "expected"),
    [
        pytest.param([10], 64, 0, [("a", 10)], id="fits"),
        pytest.param([10], 4, 0, [("a", 4)], id="chunked-by-budget"),
        pytest.param([10], 64, 3, [("a", 3)], id="chunked-by-threshold"),
        pytest.param([6, 6], 8, 0, [("a", 6), ("b", 2)], id="second-gets-the-rest"),
        pytest.param([8, 6], 8, 0, [("a", 8)], id="budget-spent"),
        pytest.param([3, 3, 3], 64, 2, [("a", 2), ("b", 2), ("c", 2)], id="threshold-each"),
    ],
)
def test_token_budget_is_shared_in_order(
    prompt_lens: list[int], budget: int, threshold: int, expected: list[tuple[str, int]]
) -> None:
    scheduler = _scheduler(max_num_batched_tokens=budget, long_prefill_token_threshold=threshold)
    for request_id, prompt_len in zip("abc", prompt_lens, strict=False):
        _enqueue(scheduler, request_id, prompt_len)

    schedule = scheduler.schedule()

    assert _chunk_sizes(schedule) == expected
    assert sum(n for _, n in _chunk_sizes(schedule)) <= budget


def test_running_requests_are_served_before_new_ones() -> None:
    scheduler = _scheduler(max_num_batched_tokens=6)
    _enqueue(scheduler, "a", 10)
    _apply(scheduler.schedule())  # a: 6 of 10
    _enqueue(scheduler, "b", 10)

    schedule = scheduler.schedule()

    # a finishes its prompt (4 tokens) first; b gets the 2 left in the budget.
    assert _chunk_sizes(schedule) == [("a", 4), ("b", 2)]
    assert [chunk.completes_prompt for chunk in schedule.chunks] == [True, False]


def test_chunks_only_complete_the_prompt_on_the_last_one() -> None:
    scheduler = _scheduler(max_num_batched_tokens=4)
    request = _enqueue(scheduler, "a", 10)

    sizes: list[int] = []
    completes: list[bool] = []
    while not request.output_token_ids:
        schedule = scheduler.schedule()
        sizes += [chunk.num_tokens for chunk in schedule.chunks]
        completes += [chunk.completes_prompt for chunk in schedule.chunks]
        _apply(schedule)

    assert sizes == [4, 4, 2]
    assert completes == [False, False, True]
    # Then it decodes one token a step.
    assert _chunk_sizes(scheduler.schedule()) == [("a", 1)]


def test_head_of_queue_that_does_not_fit_blocks_the_rest() -> None:
    # 3 usable blocks of 4 tokens: "a" needs 5 blocks, "b" would fit in one.
    scheduler = _scheduler(num_gpu_blocks=4)
    _enqueue(scheduler, "a", 20)
    _enqueue(scheduler, "b", 4)

    schedule = scheduler.schedule()

    assert schedule.chunks == []
    assert [r.request_id for r in scheduler.waiting] == ["a", "b"]
    assert scheduler.pool.num_free_blocks == 3


def test_preemption_frees_the_newest_running_request_and_requeues_it_first() -> None:
    # 4 usable blocks: a and b each hold 2 full blocks after 8 prompt tokens.
    scheduler = _scheduler(num_gpu_blocks=5, max_num_seqs=2)
    a = _enqueue(scheduler, "a", 8)
    b = _enqueue(scheduler, "b", 8)
    _enqueue(scheduler, "c", 4)
    _apply(scheduler.schedule())
    assert scheduler.pool.num_free_blocks == 0

    schedule = scheduler.schedule()

    # a needs a third block for its first decode step; b (admitted last) gives its blocks up.
    assert schedule.preempted == [b]
    assert _chunk_sizes(schedule) == [("a", 1)]
    assert [r.request_id for r in scheduler.waiting] == ["b", "c"]
    assert [r.request_id for r in scheduler.running] == ["a"]
    assert b.status is RequestStatus.WAITING
    assert b.num_computed_tokens == 0
    assert b.blocks == []
    assert b.num_preemptions == 1
    assert len(a.blocks) == 3
    # Nothing new is admitted in a step that preempted.
    assert schedule.newly_admitted == []


def test_a_request_that_cannot_grow_alone_preempts_itself() -> None:
    scheduler = _scheduler(num_gpu_blocks=3, max_num_seqs=1)
    a = _enqueue(scheduler, "a", 8)
    _apply(scheduler.schedule())

    schedule = scheduler.schedule()

    assert schedule.preempted == [a]
    assert schedule.chunks == []
    assert list(scheduler.waiting) == [a]
    assert scheduler.pool.num_free_blocks == scheduler.pool.capacity
