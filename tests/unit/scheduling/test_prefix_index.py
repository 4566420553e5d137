"""The approximate prefix index: chained block hashes in per-endpoint LRU sets."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.orchestrator.scheduling import prefix_index
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tests.unit.scheduling.support import BLOCK_CHARS, SYSTEM_PROMPT, group_prompt


def blocks(*texts: str) -> str:
    """One index block per text, each padded to exactly a block."""
    return "".join(text.ljust(BLOCK_CHARS, ".") for text in texts)


FULL_SYSTEM_BLOCKS = len(SYSTEM_PROMPT.encode()) // BLOCK_CHARS


def test_group_prompt_hits_where_the_first_was_served() -> None:
    index = PrefixIndex()
    first = index.hashes(group_prompt("What was the revenue in Q3?"))
    index.record("decode-0", first)
    second = index.hashes(group_prompt("Who signed the report?"))

    assert FULL_SYSTEM_BLOCKS >= 8
    assert index.match(second, "decode-0") == FULL_SYSTEM_BLOCKS
    assert index.match(second, "decode-1") == 0
    assert index.match(first, "decode-0") == len(first)


def test_new_prompt_does_not_hit() -> None:
    index = PrefixIndex()
    index.record("decode-0", index.hashes(group_prompt("What was the revenue in Q3?")))
    other_system = SYSTEM_PROMPT.replace("quarterly report", "annual forecast")

    new = index.hashes(group_prompt("What was the revenue in Q3?", system=other_system))

    assert len(new) >= 8
    assert index.match(new, "decode-0") == 0


@pytest.mark.parametrize(
    ("cached", "probe", "expected"),
    [
        pytest.param(blocks("A", "B", "C"), blocks("A", "B", "C"), 3, id="same"),
        pytest.param(blocks("A", "B", "C"), blocks("A", "B", "X"), 2, id="diverges-late"),
        pytest.param(blocks("A", "B", "C"), blocks("X", "B", "C"), 0, id="diverges-first"),
        pytest.param(blocks("A", "B", "C"), blocks("A", "X", "C"), 1, id="chain-broken"),
        pytest.param(blocks("A", "B"), blocks("A", "B", "C", "D"), 2, id="longer-probe"),
        pytest.param(blocks("A", "B", "C"), blocks("A") + "B", 1, id="partial-block-ignored"),
    ],
)
def test_match_counts_leading_blocks(cached: str, probe: str, expected: int) -> None:
    index = PrefixIndex()
    index.record("e", index.hashes(cached))

    assert index.match(index.hashes(probe), "e") == expected


def test_same_block_after_a_different_prefix_has_another_hash() -> None:
    index = PrefixIndex()

    after_a = index.hashes(blocks("A", "shared"))
    after_x = index.hashes(blocks("X", "shared"))

    assert after_a[1] != after_x[1]
    assert not set(after_x) & set(after_a)


@pytest.mark.parametrize(
    ("text", "kwargs", "expected_blocks"),
    [
        pytest.param("", {}, 0, id="empty"),
        pytest.param("x" * (BLOCK_CHARS - 1), {}, 0, id="under-one-block"),
        pytest.param("x" * (BLOCK_CHARS * 3 + 10), {}, 3, id="full-blocks-only"),
        pytest.param("x" * (BLOCK_CHARS * 10), {"max_prefix_tokens": 128}, 2, id="token-cap"),
        pytest.param("x" * 100, {"block_size_tokens": 4, "chars_per_token": 2.5}, 10, id="sizes"),
    ],
)
def test_hashes_cover_full_blocks_up_to_the_cap(
    text: str, kwargs: dict[str, Any], expected_blocks: int
) -> None:
    index = PrefixIndex(**kwargs)

    assert len(index.hashes(text)) == expected_blocks


def test_seed_separates_models() -> None:
    text = blocks("A", "B")

    assert PrefixIndex(seed="m1").hashes(text) == PrefixIndex(seed="m1").hashes(text)
    assert not set(PrefixIndex(seed="m1").hashes(text)) & set(PrefixIndex(seed="m2").hashes(text))


def test_lru_capacity_evicts_least_recently_recorded() -> None:
    index = PrefixIndex(lru_capacity_per_server=4)
    p1, p2, p3 = (index.hashes(blocks(f"{n}-a", f"{n}-b")) for n in ("p1", "p2", "p3"))

    index.record("e", p1)
    index.record("e", p2)
    index.record("e", p1)  # p1 is now the most recent
    index.record("e", p3)

    assert index.size("e") == 4
    assert (index.match(p1, "e"), index.match(p2, "e"), index.match(p3, "e")) == (2, 0, 2)


def test_lru_capacity_is_per_endpoint() -> None:
    index = PrefixIndex(lru_capacity_per_server=2)
    p1, p2 = index.hashes(blocks("A", "B")), index.hashes(blocks("C", "D"))

    index.record("e0", p1)
    index.record("e1", p2)

    assert (index.match(p1, "e0"), index.match(p2, "e1")) == (2, 2)


def test_set_capacity_shrinks_to_the_newest_entries() -> None:
    index = PrefixIndex()
    old, new = index.hashes(blocks("A", "B", "C")), index.hashes(blocks("X", "Y"))
    index.record("e", old)
    index.record("e", new)

    index.set_capacity("e", 2)
    assert (index.size("e"), index.match(new, "e"), index.match(old, "e")) == (2, 2, 0)

    index.record("e", old)
    assert (index.size("e"), index.match(new, "e")) == (2, 0)
    assert index.size("other") == 0


def test_set_capacity_below_one_keeps_one_block() -> None:
    index = PrefixIndex()
    index.record("e", index.hashes(blocks("A", "B")))

    index.set_capacity("e", 0)

    assert index.size("e") == 1


def test_forget_drops_entries_and_capacity() -> None:
    index = PrefixIndex(lru_capacity_per_server=3)
    hashes = index.hashes(blocks("A", "B", "C"))
    index.record("e", hashes)
    index.set_capacity("e", 1)

    index.forget("e")
    assert (index.size("e"), index.match(hashes, "e")) == (0, 0)

    index.record("e", hashes)  # back to the default capacity
    assert index.match(hashes, "e") == 3


def test_forget_unknown_endpoint_is_harmless() -> None:
    index = PrefixIndex()
    hashes = index.hashes(blocks("A"))
    index.record("e", hashes)

    index.forget("never-seen")

    assert index.match(hashes, "e") == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"block_size_tokens": 0}, {"lru_capacity_per_server": 0}, {"chars_per_token": 0.0}],
)
def test_sizes_must_be_positive(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        PrefixIndex(**kwargs)


def test_a_prompt_seen_again_hashes_the_same_and_callers_get_their_own_list() -> None:
    index = PrefixIndex()
    text = blocks("A", "B", "C")
    first = index.hashes(text)
    first.append(0)  # a caller's list is its own

    assert index.hashes(text) == first[:3] == PrefixIndex().hashes(text)


def test_remembered_prompt_hashes_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefix_index, "HASHED_BLOCKS_KEPT", 10)
    index, fresh = PrefixIndex(), PrefixIndex()
    texts = [blocks(f"{n}a", f"{n}b", f"{n}c") for n in range(8)]

    for text in texts:
        index.hashes(text)

    assert index._hashed_blocks <= 10
    assert len(index._hashed) == 3
    assert [index.hashes(text) for text in texts] == [fresh.hashes(text) for text in texts]


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab cé\n", max_size=3000),
    block_tokens=st.integers(1, 40),
    max_tokens=st.integers(1, 2000),
)
def test_hashes_remembered_by_runs_equal_one_block_at_a_time(
    text: str, block_tokens: int, max_tokens: int
) -> None:
    index = PrefixIndex(
        block_size_tokens=block_tokens, max_prefix_tokens=max_tokens, chars_per_token=1.0
    )
    data, size = text.encode(), index.block_chars
    parent = hashlib.blake2b(b"", digest_size=8).digest()  # the empty seed's
    expected = []
    for start in range(0, min(len(data) // size, index.max_blocks) * size, size):
        parent = hashlib.blake2b(parent + data[start : start + size], digest_size=8).digest()
        expected.append(int.from_bytes(parent, "big"))

    assert index.hashes(text) == expected
    assert index.hashes(text) == expected  # remembered whole, then by runs
