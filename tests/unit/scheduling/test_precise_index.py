"""The precise prefix index: what the engines' events say each endpoint holds, speculative
entries, gaps, replays, restarts and staleness."""

from __future__ import annotations

import pytest

from tandem.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEvent
from tandem.orchestrator.scheduling.precise_index import PreciseIndex, SyncState


def stored(*hashes: int, parent: int | None = None) -> BlockStored:
    return BlockStored(hashes, parent, tuple(range(len(hashes) * 4)), 4)


def batch(*events: KVEvent) -> EventBatch:
    return EventBatch(0.0, events)


def synced(index: PreciseIndex, name: str, *events: KVEvent) -> None:
    """`name` follows its stream from seq 0, with these events in its first batch."""
    assert index.apply(name, 0, batch(*events), now=0.0).applied


def test_the_index_learns_exactly_the_blocks_an_endpoint_reports() -> None:
    index = PreciseIndex()
    synced(index, "a", stored(1, 2, 3))
    index.apply("a", 1, batch(stored(4, parent=3)), now=0.0)
    synced(index, "b", stored(1, 2))

    assert index.match([1, 2, 3, 4, 5], ["a", "b"], now=0.0) == {"a": 4, "b": 2}
    assert index.match([9, 2], ["a", "b"], now=0.0) == {"a": 0, "b": 0}
    assert index.num_hashes == 4
    assert index.block_size("a") == 4


def test_evicted_blocks_are_forgotten_and_a_reset_forgets_everything() -> None:
    index = PreciseIndex()
    synced(index, "a", stored(1, 2, 3))
    index.apply("a", 1, batch(BlockRemoved((3,)), BlockRemoved((2,))), now=0.0)
    assert index.match([1, 2, 3], ["a"], now=0.0) == {"a": 1}
    index.apply("a", 2, batch(AllBlocksCleared()), now=0.0)
    assert index.match([1], ["a"], now=0.0) == {"a": 0}
    assert index.num_hashes == 0


def test_a_hash_stays_held_until_its_last_copy_is_evicted() -> None:
    index = PreciseIndex()
    synced(index, "a", stored(1), stored(1))  # two requests computed the same block
    index.apply("a", 1, batch(BlockRemoved((1,))), now=0.0)
    assert index.match([1], ["a"], now=0.0) == {"a": 1}
    index.apply("a", 2, batch(BlockRemoved((1,))), now=0.0)
    assert index.match([1], ["a"], now=0.0) == {"a": 0}


def test_a_skipped_sequence_number_is_a_gap_that_a_replay_fills() -> None:
    index = PreciseIndex()
    synced(index, "a", stored(1))
    result = index.apply("a", 2, batch(stored(3, parent=2)), now=0.0)
    assert (result.applied, result.gap_from) == (False, 1)
    assert not index.authoritative("a", now=0.0)

    replayed = [(1, batch(stored(2, parent=1))), (2, batch(stored(3, parent=2)))]
    assert index.resync("a", replayed, now=0.0)
    assert index.authoritative("a", now=0.0)
    assert index.match([1, 2, 3], ["a"], now=0.0) == {"a": 3}
    assert not index.apply("a", 2, batch(stored(3)), now=0.0).applied  # already applied


def test_a_replay_that_starts_past_the_gap_loses_the_history() -> None:
    index = PreciseIndex()
    synced(index, "a", stored(1))
    index.apply("a", 5, batch(stored(6)), now=0.0)
    assert not index.resync("a", [(4, batch(stored(5))), (5, batch(stored(6)))], now=0.0)
    assert index.endpoint("a") is not None
    assert index.match([1], ["a"], now=0.0) == {"a": 0}  # entries dropped: cannot be trusted


def test_joining_mid_stream_needs_the_history() -> None:
    index = PreciseIndex()
    result = index.apply("a", 7, batch(stored(1)), now=0.0)
    assert result.gap_from == 0
    state = index.endpoint("a")
    assert state is not None
    assert state.state is SyncState.UNSYNCED
    # The buffer still holds everything from seq 0: the endpoint syncs.
    assert index.resync("a", [(0, batch(stored(9))), (7, batch(stored(1)))], now=0.0)
    assert index.match([9], ["a"], now=0.0) == {"a": 1}


def test_an_engine_that_restarts_starts_again_from_nothing() -> None:
    index = PreciseIndex()
    synced(index, "a", stored(1, 2))
    index.apply("a", 1, batch(stored(3, parent=2)), now=0.0)
    result = index.apply("a", 0, batch(stored(7)), now=0.0)
    assert result.restarted
    assert index.match([1], ["a"], now=0.0) == {"a": 0}
    assert index.match([7], ["a"], now=0.0) == {"a": 1}


def test_speculative_entries_count_until_their_ttl() -> None:
    index = PreciseIndex(speculative_ttl_s=2.0)
    synced(index, "a")
    synced(index, "b")
    index.speculate("b", [1, 2], now=10.0, expect_events=True)
    assert index.match([1, 2, 3], ["a", "b"], now=11.9) == {"a": 0, "b": 2}
    assert index.match([1, 2, 3], ["a", "b"], now=12.0) == {"a": 0, "b": 0}


def test_events_that_do_not_follow_a_routed_request_make_the_endpoint_stale() -> None:
    index = PreciseIndex(stale_after_s=5.0)
    synced(index, "a")
    index.speculate("a", [1], now=10.0, expect_events=True)
    assert index.authoritative("a", now=15.0)
    assert not index.authoritative("a", now=15.1)
    index.apply("a", 1, batch(stored(1)), now=15.2)
    assert index.authoritative("a", now=15.3)


def test_a_request_whose_blocks_are_all_held_expects_no_events() -> None:
    index = PreciseIndex(stale_after_s=5.0)
    synced(index, "a", stored(1))
    index.speculate("a", [1], now=10.0, expect_events=False)
    assert index.authoritative("a", now=60.0)


def test_past_its_budget_the_index_forgets_the_endpoint_holding_most() -> None:
    index = PreciseIndex(max_blocks=4)
    synced(index, "small", stored(100))
    synced(index, "big", stored(1, 2, 3))
    index.apply("big", 1, batch(stored(4, parent=3)), now=0.0)
    assert index.num_hashes == 1
    assert index.match([100], ["small"], now=0.0) == {"small": 1}
    assert not index.authoritative("big", now=0.0)


def test_a_removed_endpoint_frees_its_entries_and_its_slot() -> None:
    index = PreciseIndex()
    synced(index, "a", stored(1))
    index.speculate("a", [5], now=0.0, expect_events=False)
    index.remove_endpoint("a")
    synced(index, "b", stored(2))
    assert index.num_hashes == 1
    assert index.match([1], ["b"], now=0.0) == {"b": 0}
    assert index.match([5], ["b"], now=0.0) == {"b": 0}


@pytest.mark.parametrize("endpoints", [1, 16, 64])
def test_matching_many_endpoints_reports_each_one(endpoints: int) -> None:
    index = PreciseIndex()
    names = [f"e{i}" for i in range(endpoints)]
    for i, name in enumerate(names):
        synced(index, name, stored(*range(1, i + 2)))  # endpoint i holds i + 1 blocks
    matched = index.match(list(range(1, endpoints + 5)), names, now=0.0)
    assert matched == {name: i + 1 for i, name in enumerate(names)}


def test_an_empty_replay_of_a_new_stream_is_an_empty_history() -> None:
    index = PreciseIndex()
    assert index.resync("a", [], now=0.0)
    assert index.authoritative("a", now=0.0)
    index.apply("a", 0, batch(stored(1)), now=0.0)
    assert index.match([1], ["a"], now=0.0) == {"a": 1}


def test_an_empty_replay_of_a_gap_loses_the_history() -> None:
    index = PreciseIndex()
    synced(index, "a", stored(1))
    index.apply("a", 3, batch(stored(4)), now=0.0)
    assert not index.resync("a", [], now=0.0)
    assert not index.authoritative("a", now=0.0)
