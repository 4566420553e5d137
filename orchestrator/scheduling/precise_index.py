"""Precise prefix index: which endpoint holds which KV block, from the engines' own events.

Each endpoint's vLLM publishes `BlockStored` / `BlockRemoved` / `AllBlocksCleared` as its
prefix cache changes (`tandem.kvcache.events`); applied here, they say exactly which blocks a pod
holds, named by the engine's own block hashes (`tandem.kvcache.hashing`). A request's prompt,
tokenized and hashed the way the engine will, then matches block by block.

- **Copies**: an engine may hold two copies of a block (two requests computed it at once) and
  reports each copy's storage and eviction; a hash stays held until its last copy goes.
- **Speculative entries**: a request just routed to an endpoint will store its blocks there
  in a step or two; until the events say so, its blocks count as held there for
  `speculative_ttl_s` (llm-d's `speculativeIndexing`, 2 s by default), so the next request of
  the same prefix follows it instead of landing elsewhere.
- **Authority**: an endpoint's entries are trusted only while its event stream is whole: the
  subscriber has its history (replayed from the engine's buffer, or seen from seq 0) and no
  gap since, and events follow the requests routed there (`stale_after_s`). Otherwise
  `authoritative` says no, and the scheduler uses the approximate index for that endpoint.
- **Memory**: one dict entry per held hash (a bitmask of holders), plus extra copies and
  speculative entries; past `max_blocks` held hashes, the endpoint holding the most is
  forgotten and must resynchronise.

Pure: the subscriber (`orchestrator/kv_events.py`) feeds it; every method takes the time.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tandem.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from tandem.logs import EventLog

logger = EventLog(__name__)


class SyncState(enum.StrEnum):
    """Where an endpoint's event stream stands."""

    UNSYNCED = "unsynced"
    """No history yet (just subscribed, or a gap that replay has not filled)."""
    SYNCED = "synced"


@dataclass(slots=True)
class EndpointEvents:
    """One endpoint's place in its event stream."""

    bit: int
    state: SyncState = SyncState.UNSYNCED
    last_seq: int | None = None
    blocks: int = 0
    """Hashes this endpoint holds (each counted once)."""
    block_size: int | None = None
    awaiting_since: float | None = None
    """When a request routed here was expected to produce events that have not come."""
    last_event_at: float | None = None


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying one message did: `gap_from` is the first missing seq when the stream
    skipped some (the subscriber should replay from there)."""

    applied: bool
    gap_from: int | None = None
    restarted: bool = False


@dataclass(slots=True)
class PreciseIndex:
    speculative_ttl_s: float = 2.0
    stale_after_s: float = 5.0
    max_blocks: int = 50_000_000
    _endpoints: dict[str, EndpointEvents] = field(default_factory=dict)
    _free_bits: list[int] = field(default_factory=list)
    _next_bit: int = 0
    _holders: dict[int, int] = field(default_factory=dict)
    """hash → bitmask of the endpoints holding at least one copy."""
    _copies: dict[tuple[int, int], int] = field(default_factory=dict)
    """(hash, bit) → copies held, only where more than one."""
    _speculative: dict[int, dict[int, float]] = field(default_factory=dict)
    """hash → {bit: expiry}."""
    _speculative_mask: dict[int, int] = field(default_factory=dict)
    """hash → bitmask of the endpoints in `_speculative[hash]`: a match reads one int."""
    _expiries: deque[tuple[float, int, tuple[int, ...]]] = field(default_factory=deque)

    # -- endpoints ------------------------------------------------------------------------

    def add_endpoint(self, name: str) -> EndpointEvents:
        state = self._endpoints.get(name)
        if state is None:
            bit = self._free_bits.pop() if self._free_bits else self._take_bit()
            state = self._endpoints[name] = EndpointEvents(bit)
        return state

    def remove_endpoint(self, name: str) -> None:
        state = self._endpoints.pop(name, None)
        if state is not None:
            self._clear(state)
            self._drop_speculative_bit(state.bit)
            self._free_bits.append(state.bit)

    def endpoint(self, name: str) -> EndpointEvents | None:
        return self._endpoints.get(name)

    def endpoints(self) -> Mapping[str, EndpointEvents]:
        return self._endpoints

    def authoritative(self, name: str, now: float) -> bool:
        """Whether `name`'s entries can be trusted now (see the module docstring)."""
        state = self._endpoints.get(name)
        if state is None or state.state is not SyncState.SYNCED:
            return False
        return state.awaiting_since is None or now - state.awaiting_since <= self.stale_after_s

    def block_size(self, name: str) -> int | None:
        state = self._endpoints.get(name)
        return state.block_size if state is not None else None

    @property
    def num_hashes(self) -> int:
        return len(self._holders)

    def held(self, name: str) -> set[int]:
        """The block hashes the events say `name` holds (for inspection; O(index))."""
        state = self._endpoints.get(name)
        if state is None:
            return set()
        bit = 1 << state.bit
        return {block_hash for block_hash, holders in self._holders.items() if holders & bit}

    # -- the event stream -----------------------------------------------------------------

    def apply(self, name: str, seq: int, batch: EventBatch, now: float) -> ApplyResult:
        """Apply one received batch in stream order; a batch already applied is ignored."""
        state = self.add_endpoint(name)
        last = state.last_seq
        restarted = last is not None and seq < last and seq == 0
        if restarted:  # the engine restarted: its cache is empty, its counter back at 0
            logger.info("kv_events_restarted", endpoint=name)
            self._clear(state)
            last = state.last_seq = None
            state.state = SyncState.SYNCED
        elif last is not None and seq <= last:
            return ApplyResult(False)
        gap_from: int | None = None
        if last is None and seq != 0 and state.state is not SyncState.SYNCED:
            gap_from = 0  # joined mid-stream: the history is missing
        elif last is not None and seq != last + 1:
            gap_from = last + 1
        if gap_from is not None:
            state.state = SyncState.UNSYNCED
            return ApplyResult(False, gap_from=gap_from)
        self._apply_events(state, batch)
        state.last_seq = seq
        state.state = SyncState.SYNCED
        state.awaiting_since = None
        state.last_event_at = now
        self._enforce_budget()
        return ApplyResult(True, restarted=restarted)

    def resync(self, name: str, messages: Iterable[tuple[int, EventBatch]], now: float) -> bool:
        """Rebuild `name`'s entries from a replay (every buffered batch, from seq 0 when the
        engine still has it). Returns whether the endpoint is synchronised again: a replay
        that starts after the missing seq cannot fill the gap."""
        state = self.add_endpoint(name)
        ordered = sorted(messages, key=lambda message: message[0])
        if not ordered and state.last_seq is None:
            # The engine buffers its last batches, so nothing buffered is nothing published.
            self._clear(state)
            state.state = SyncState.SYNCED
            state.last_event_at = now
            return True
        start = ordered[0][0] if ordered else None
        if start is not None and state.last_seq is not None and start <= state.last_seq + 1:
            pending = [(seq, batch) for seq, batch in ordered if seq > state.last_seq]
        elif start == 0:
            self._clear(state)
            pending = ordered
        else:
            logger.warning(
                "kv_events_history_lost", endpoint=name, replay_from=start, last=state.last_seq
            )
            self._clear(state)
            state.last_seq = None
            state.state = SyncState.UNSYNCED
            return False
        for seq, batch in pending:
            self._apply_events(state, batch)
            state.last_seq = seq
        state.state = SyncState.SYNCED
        state.awaiting_since = None
        state.last_event_at = now
        self._enforce_budget()
        return state.state is SyncState.SYNCED

    def desync(self, name: str) -> None:
        """The stream broke and cannot be mended: forget the endpoint's entries."""
        state = self._endpoints.get(name)
        if state is not None:
            self._clear(state)
            state.last_seq = None
            state.state = SyncState.UNSYNCED

    def _apply_events(self, state: EndpointEvents, batch: EventBatch) -> None:
        for event in batch.events:
            if isinstance(event, BlockStored):
                state.block_size = event.block_size
                for block_hash in event.block_hashes:
                    self._store(state, block_hash)
            elif isinstance(event, BlockRemoved):
                for block_hash in event.block_hashes:
                    self._remove(state, block_hash)
            elif isinstance(event, AllBlocksCleared):
                self._clear(state)

    def _enforce_budget(self) -> None:
        if len(self._holders) <= self.max_blocks:
            return
        name, largest = max(self._endpoints.items(), key=lambda item: item[1].blocks)
        logger.warning("kv_index_over_budget", forgetting=name, blocks=largest.blocks)
        self._clear(largest)
        largest.state, largest.last_seq = SyncState.UNSYNCED, None

    def _store(self, state: EndpointEvents, block_hash: int) -> None:
        bit = 1 << state.bit
        holders = self._holders.get(block_hash, 0)
        if holders & bit:
            key = (block_hash, state.bit)
            self._copies[key] = self._copies.get(key, 1) + 1
            return
        self._holders[block_hash] = holders | bit
        state.blocks += 1

    def _remove(self, state: EndpointEvents, block_hash: int) -> None:
        bit = 1 << state.bit
        holders = self._holders.get(block_hash, 0)
        if not holders & bit:
            return  # never seen stored (joined late): nothing to forget
        key = (block_hash, state.bit)
        copies = self._copies.get(key)
        if copies is not None:
            if copies > 2:
                self._copies[key] = copies - 1
            else:
                del self._copies[key]
            return
        holders &= ~bit
        if holders:
            self._holders[block_hash] = holders
        else:
            del self._holders[block_hash]
        state.blocks -= 1

    def _clear(self, state: EndpointEvents) -> None:
        if not state.blocks:
            return
        bit = 1 << state.bit
        for block_hash in [h for h, holders in self._holders.items() if holders & bit]:
            holders = self._holders[block_hash] & ~bit
            if holders:
                self._holders[block_hash] = holders
            else:
                del self._holders[block_hash]
        for key in [k for k in self._copies if k[1] == state.bit]:
            del self._copies[key]
        state.blocks = 0

    def _take_bit(self) -> int:
        bit = self._next_bit
        self._next_bit += 1
        return bit

    # -- routing --------------------------------------------------------------------------

    def speculate(
        self, name: str, hashes: Sequence[int], now: float, *, expect_events: bool
    ) -> None:
        """A request with these block hashes was just routed to `name`: count them held
        there until `speculative_ttl_s` passes (events normally confirm them sooner)."""
        state = self._endpoints.get(name)
        if state is None or not hashes:
            return
        if expect_events and state.awaiting_since is None:
            state.awaiting_since = now
        self._expire(now)
        expiry = now + self.speculative_ttl_s
        flag = 1 << state.bit
        masks = self._speculative_mask
        for block_hash in hashes:
            self._speculative.setdefault(block_hash, {})[state.bit] = expiry
            masks[block_hash] = masks.get(block_hash, 0) | flag
        self._expiries.append((expiry, state.bit, tuple(hashes)))

    def match(self, hashes: Sequence[int], names: Iterable[str], now: float) -> dict[str, int]:
        """Leading blocks of `hashes` each endpoint holds (or is speculated to hold)."""
        self._expire(now)
        bits = {
            name: state.bit for name in names if (state := self._endpoints.get(name)) is not None
        }
        result = dict.fromkeys(bits, 0)
        alive = 0
        for bit in bits.values():
            alive |= 1 << bit
        matched = 0
        held = self._holders.get
        speculated = self._speculative_mask.get
        for block_hash in hashes:
            still = alive & (held(block_hash, 0) | speculated(block_hash, 0))
            if still != alive:
                self._record_matches(result, bits, alive & ~still, matched)
                alive = still
                if not alive:
                    return result
            matched += 1
        self._record_matches(result, bits, alive, matched)
        return result

    @staticmethod
    def _record_matches(
        result: dict[str, int], bits: Mapping[str, int], mask: int, matched: int
    ) -> None:
        if mask:
            for name, bit in bits.items():
                if mask >> bit & 1:
                    result[name] = matched

    def _expire(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expiry, bit, hashes = expiries.popleft()
            for block_hash in hashes:
                entry = self._speculative.get(block_hash)
                if entry is not None and entry.get(bit) == expiry:
                    self._unspeculate(block_hash, entry, bit)

    def _drop_speculative_bit(self, bit: int) -> None:
        for block_hash in [h for h, entry in self._speculative.items() if bit in entry]:
            self._unspeculate(block_hash, self._speculative[block_hash], bit)

    def _unspeculate(self, block_hash: int, entry: dict[int, float], bit: int) -> None:
        del entry[bit]
        if entry:
            self._speculative_mask[block_hash] &= ~(1 << bit)
        else:
            del self._speculative[block_hash]
            del self._speculative_mask[block_hash]
