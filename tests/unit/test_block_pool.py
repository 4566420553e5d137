"""BlockPool: chained prefix hashes, prefix hits, LRU eviction, references and usage."""

from __future__ import annotations

import pytest

from tandem.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored
from tandem.kvcache.hashing import (
    external_hash,
    external_prompt_hashes,
    hash_block_tokens,
    hash_prompt_blocks,
)
from tandem.simulator.block_pool import BlockPool, KVBlock

BLOCK_SIZE = 4


def _cached_request(pool: BlockPool, token_ids: list[int]) -> list[KVBlock]:
    """Allocate and register one block per full block of `token_ids`, as a finished prefill."""
    hashes = hash_prompt_blocks(token_ids, BLOCK_SIZE)
    blocks = pool.allocate(len(hashes))
    assert blocks is not None
    full = token_ids[: len(hashes) * BLOCK_SIZE]
    pool.register(blocks, hashes, None, full, BLOCK_SIZE)
    return blocks


@pytest.mark.parametrize(
    ("token_ids", "expected_blocks"),
    [
        ([], 0),
        ([1, 2, 3], 0),
        ([1, 2, 3, 4], 1),
        ([1, 2, 3, 4, 5], 1),
        ([1, 2, 3, 4, 5, 6, 7, 8], 2),
    ],
)
def test_only_full_blocks_are_hashed(token_ids: list[int], expected_blocks: int) -> None:
    assert len(hash_prompt_blocks(token_ids, BLOCK_SIZE)) == expected_blocks


def test_block_hashes_are_chained_from_the_parent() -> None:
    first = hash_prompt_blocks([1, 2, 3, 4, 5, 6, 7, 8], BLOCK_SIZE)
    other_parent = hash_prompt_blocks([9, 9, 9, 9, 5, 6, 7, 8], BLOCK_SIZE)

    assert first[0] == hash_block_tokens(None, [1, 2, 3, 4])
    assert first[1] == hash_block_tokens(first[0], [5, 6, 7, 8])
    # Same tokens in the second block, different parent: a different hash.
    assert first[1] != other_parent[1]
    assert hash_block_tokens(None, [5, 6, 7, 8]) != first[1]


@pytest.mark.parametrize("length", [0, 3, 4, 9, 4 * 40, 4 * 70 + 3])
def test_external_prompt_hashes_are_the_events_names_of_the_prompt_blocks(length: int) -> None:
    # Runs of blocks are remembered: a second prompt sharing a prefix reuses them, and the
    # answer is the same as hashing each block.
    tokens = [(i * 7) % 50 for i in range(length)]
    parent = hash_block_tokens(None, [1, 2, 3, 4])
    for ids, start in ((tokens, None), ([*tokens[:200], 5, 5, 5, 5], None), (tokens, parent)):
        expected = [external_hash(h) for h in hash_prompt_blocks(ids, BLOCK_SIZE, start)]
        assert external_prompt_hashes(ids, BLOCK_SIZE, start) == expected


@pytest.mark.parametrize(
    ("second_prompt", "expected_hits"),
    [
        pytest.param([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 3, id="same-prompt"),
        pytest.param([1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0], 2, id="shared-two-blocks"),
        pytest.param([1, 2, 3, 4, 0, 6, 7, 8, 9, 10, 11, 12], 1, id="diverges-in-block-2"),
        pytest.param([0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 0, id="different-first-block"),
        pytest.param([9, 9, 9, 9, 5, 6, 7, 8, 9, 10, 11, 12], 0, id="same-tail-other-parent"),
    ],
)
def test_prefix_hits_across_requests(second_prompt: list[int], expected_hits: int) -> None:
    pool = BlockPool(num_gpu_blocks=16)
    first_blocks = _cached_request(pool, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])

    hits = pool.longest_cached_prefix(hash_prompt_blocks(second_prompt, BLOCK_SIZE))

    assert hits == first_blocks[:expected_hits]


def test_cached_blocks_stay_reusable_after_free() -> None:
    pool = BlockPool(num_gpu_blocks=16)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    blocks = _cached_request(pool, prompt)
    pool.free(blocks)

    assert pool.longest_cached_prefix(hash_prompt_blocks(prompt, BLOCK_SIZE)) == blocks
    assert pool.num_cached_blocks == 2


def test_prefix_caching_disabled_never_hits() -> None:
    pool = BlockPool(num_gpu_blocks=16, enable_prefix_caching=False)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    _cached_request(pool, prompt)

    assert pool.longest_cached_prefix(hash_prompt_blocks(prompt, BLOCK_SIZE)) == []
    assert pool.num_cached_blocks == 0


def test_two_copies_of_a_block_keep_its_hash_cached_until_the_last_goes() -> None:
    pool = BlockPool(num_gpu_blocks=3)
    block_hash = hash_block_tokens(None, [1, 2, 3, 4])
    allocated = pool.allocate(2)
    assert allocated is not None
    first, second = allocated
    pool.register([first], [block_hash], None, [1, 2, 3, 4], BLOCK_SIZE)
    pool.register([second], [block_hash], None, [1, 2, 3, 4], BLOCK_SIZE)
    assert pool.longest_cached_prefix([block_hash]) == [first]

    pool.free([first])
    pool.free([second])
    assert pool.allocate(1) == [first]  # evicts the first copy
    assert pool.longest_cached_prefix([block_hash]) == [second]
    assert pool.allocate(1) == [second]
    assert pool.longest_cached_prefix([block_hash]) == []


def test_registering_and_evicting_record_vllms_kv_events() -> None:
    pool = BlockPool(num_gpu_blocks=3, kv_events=True)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    hashes = hash_prompt_blocks(prompt, BLOCK_SIZE)
    blocks = pool.allocate(1)
    assert blocks is not None
    pool.register(blocks, hashes[:1], None, prompt[:4], BLOCK_SIZE)
    more = pool.allocate(1)
    assert more is not None
    pool.register(more, hashes[1:], hashes[0], prompt[4:], BLOCK_SIZE)
    pool.free(blocks + more)
    pool.allocate(2)  # evicts the request's blocks, tail first
    assert pool.reset_prefix_cache() is False  # blocks in use
    first, second = (external_hash(h) for h in hashes)

    assert pool.take_events() == [
        BlockStored((first,), None, (1, 2, 3, 4), BLOCK_SIZE),
        BlockStored((second,), first, (5, 6, 7, 8), BLOCK_SIZE),
        BlockRemoved((second,)),
        BlockRemoved((first,)),
    ]
    assert pool.take_events() == []


def test_a_reset_records_all_blocks_cleared() -> None:
    pool = BlockPool(num_gpu_blocks=3, kv_events=True)
    _cached_request(pool, [1, 2, 3, 4])
    pool.free([pool.block(1)])
    pool.take_events()
    assert pool.reset_prefix_cache() is True
    assert pool.take_events() == [AllBlocksCleared()]


def test_without_kv_events_nothing_is_recorded() -> None:
    pool = BlockPool(num_gpu_blocks=3)
    _cached_request(pool, [1, 2, 3, 4])
    assert pool.take_events() == []


@pytest.mark.parametrize(
    ("num_allocated_after_free", "surviving_prefix"),
    [
        # Capacity 4: blocks 3 and 4 were never used, so they go first.
        (0, 2),
        (2, 2),
        # Then the request's blocks, tail first: its second block is evicted before its first.
        (3, 1),
        (4, 0),
    ],
)
def test_eviction_takes_the_tail_of_a_prefix_first(
    num_allocated_after_free: int, surviving_prefix: int
) -> None:
    pool = BlockPool(num_gpu_blocks=5)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    blocks = _cached_request(pool, prompt)
    pool.free(blocks)

    assert pool.allocate(num_allocated_after_free) is not None

    hits = pool.longest_cached_prefix(hash_prompt_blocks(prompt, BLOCK_SIZE))
    assert hits == blocks[:surviving_prefix]
    assert pool.num_evictions == max(0, num_allocated_after_free - 2)


@pytest.mark.parametrize(
    ("num_allocated_after_free", "a_hits", "b_hits"),
    [
        (0, 2, 2),
        # A was freed first, so A's blocks (tail first) go before any of B's.
        (1, 1, 2),
        (2, 0, 2),
        (3, 0, 1),
        (4, 0, 0),
    ],
)
def test_least_recently_freed_request_is_evicted_first(
    num_allocated_after_free: int, a_hits: int, b_hits: int
) -> None:
    pool = BlockPool(num_gpu_blocks=5)
    prompt_a = [1, 2, 3, 4, 5, 6, 7, 8]
    prompt_b = [11, 12, 13, 14, 15, 16, 17, 18]
    blocks_a = _cached_request(pool, prompt_a)
    blocks_b = _cached_request(pool, prompt_b)
    pool.free(blocks_a)
    pool.free(blocks_b)

    assert pool.allocate(num_allocated_after_free) is not None

    assert len(pool.longest_cached_prefix(hash_prompt_blocks(prompt_a, BLOCK_SIZE))) == a_hits
    assert len(pool.longest_cached_prefix(hash_prompt_blocks(prompt_b, BLOCK_SIZE))) == b_hits


def test_touch_removes_cached_blocks_from_the_free_queue() -> None:
    pool = BlockPool(num_gpu_blocks=5)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    blocks = _cached_request(pool, prompt)
    pool.free(blocks)
    assert pool.num_free_blocks == 4

    pool.touch(blocks[:1])

    assert pool.num_free_blocks == 3
    assert blocks[0].ref_cnt == 1
    rest = pool.allocate(3)
    assert rest is not None
    assert blocks[0] not in rest
    assert pool.allocate(1) is None
    # The touched block kept its hash through the evictions around it.
    hits = pool.longest_cached_prefix(hash_prompt_blocks(prompt, BLOCK_SIZE))
    assert hits == blocks[:1]


def test_touch_of_a_block_in_use_only_adds_a_reference() -> None:
    pool = BlockPool(num_gpu_blocks=5)
    blocks = _cached_request(pool, [1, 2, 3, 4])
    free_before = pool.num_free_blocks

    pool.touch(blocks)
    pool.free(blocks)

    assert blocks[0].ref_cnt == 1
    assert pool.num_free_blocks == free_before


@pytest.mark.parametrize(
    ("num_gpu_blocks", "allocated", "expected_usage"),
    [
        (5, 0, 0.0),
        (5, 1, 0.25),
        (5, 2, 0.5),
        (5, 4, 1.0),
        (11, 5, 0.5),
    ],
)
def test_usage_counts_blocks_in_use_over_usable_capacity(
    num_gpu_blocks: int, allocated: int, expected_usage: float
) -> None:
    pool = BlockPool(num_gpu_blocks=num_gpu_blocks)
    blocks = pool.allocate(allocated)
    assert blocks is not None

    assert pool.capacity == num_gpu_blocks - 1
    assert pool.usage == pytest.approx(expected_usage)

    pool.free(blocks)
    assert pool.usage == 0.0


def test_cached_free_blocks_do_not_count_as_used() -> None:
    pool = BlockPool(num_gpu_blocks=5)
    pool.free(_cached_request(pool, [1, 2, 3, 4, 5, 6, 7, 8]))

    assert pool.num_cached_blocks == 2
    assert pool.usage == 0.0


def test_allocate_more_than_free_returns_none_and_takes_nothing() -> None:
    pool = BlockPool(num_gpu_blocks=5)

    assert pool.allocate(5) is None
    assert pool.num_free_blocks == 4


def test_freeing_twice_raises() -> None:
    pool = BlockPool(num_gpu_blocks=5)
    blocks = pool.allocate(2)
    assert blocks is not None
    pool.free(blocks)

    with pytest.raises(RuntimeError, match="freed more often than taken"):
        pool.free(blocks)


@pytest.mark.parametrize("num_gpu_blocks", [2, 3, 17])
def test_null_block_is_never_handed_out(num_gpu_blocks: int) -> None:
    pool = BlockPool(num_gpu_blocks=num_gpu_blocks)

    blocks = pool.allocate(pool.capacity)

    assert blocks is not None
    ids = sorted(block.block_id for block in blocks)
    assert ids == list(range(1, num_gpu_blocks))
    assert pool.allocate(1) is None
    # Freeing and reallocating everything still never yields block 0.
    pool.free(blocks)
    again = pool.allocate(pool.capacity)
    assert again is not None
    assert 0 not in {block.block_id for block in again}


@pytest.mark.parametrize("num_gpu_blocks", [0, 1])
def test_pool_needs_a_usable_block(num_gpu_blocks: int) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        BlockPool(num_gpu_blocks=num_gpu_blocks)


@pytest.mark.parametrize(("in_use", "expected"), [(False, True), (True, False)])
def test_reset_prefix_cache_only_when_idle(in_use: bool, expected: bool) -> None:
    pool = BlockPool(num_gpu_blocks=5)
    prompt = [1, 2, 3, 4]
    blocks = _cached_request(pool, prompt)
    if not in_use:
        pool.free(blocks)

    assert pool.reset_prefix_cache() is expected

    hits = pool.longest_cached_prefix(hash_prompt_blocks(prompt, BLOCK_SIZE))
    assert (hits == []) is expected


def test_a_prompt_hashed_again_gives_a_list_of_its_own() -> None:
    first = hash_prompt_blocks([1, 2, 3, 4, 5, 6, 7, 8], BLOCK_SIZE)
    first.clear()

    assert len(hash_prompt_blocks([1, 2, 3, 4, 5, 6, 7, 8], BLOCK_SIZE)) == 2


def test_a_long_prompt_hashes_as_one_chain_of_blocks() -> None:
    # Hashed in runs of blocks, remembered; the result is the plain chain all the same.
    token_ids = [(7 * i) % 50 for i in range(BLOCK_SIZE * 150 + 3)]
    expected, parent = [], None
    for start in range(0, BLOCK_SIZE * 150, BLOCK_SIZE):
        parent = hash_block_tokens(parent, token_ids[start : start + BLOCK_SIZE])
        expected.append(parent)

    assert hash_prompt_blocks(token_ids, BLOCK_SIZE) == expected
    assert hash_prompt_blocks(token_ids[: BLOCK_SIZE * 70], BLOCK_SIZE) == expected[:70]


def test_a_freed_block_without_a_hash_is_reused_first_cached_ones_last() -> None:
    pool = BlockPool(num_gpu_blocks=6)  # 5 usable
    prompt = [1, 2, 3, 4, 5, 6]  # one full block, one partial
    blocks = pool.allocate(2)
    assert blocks is not None
    full, partial = blocks
    pool.register([full], hash_prompt_blocks(prompt, BLOCK_SIZE), None, prompt[:4], BLOCK_SIZE)
    pool.free(blocks)
    # Never-used blocks 3, 4, 5 stay ahead of the cached one; the partial block jumps ahead.
    assert pool.allocate(1) == [partial]
    assert pool.front_holds_cached(3) is False
    assert pool.front_holds_cached(4) is True
    assert [b.block_id for b in (pool.allocate(4) or [])] == [3, 4, 5, full.block_id]
