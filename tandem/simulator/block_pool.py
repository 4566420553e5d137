"""Paged KV block pool with prefix caching, modelled on vLLM V1's `BlockPool`.

* A block holds `block_size` tokens. Block 0 is vLLM's reserved null block and never handed
  out, so usable capacity is `num_gpu_blocks - 1` and ids start at 1.
* A full block is identified by a hash chained from its parent block's hash and its own token
  ids (`tandem.kvcache.hashing`). A block whose hash is registered can be reused by any later
  request with the same prefix; two requests that computed the same block at once both
  register theirs, and the hash stays cached until the last copy is evicted.
* Blocks whose reference count drops to zero go to the back of a free queue but keep their
  hash: they stay reusable until the pool needs space, and then the front of the queue (least
  recently freed) is evicted first. A request frees its blocks tail first, so a prefix's
  later blocks are evicted before its earlier ones (vLLM does the same). A freed block with
  no hash (a partly filled last block) goes to the front instead: nothing can hit it.
* With `kv_events`, registering and evicting blocks records vLLM's KV cache events
  (`BlockStored` per registration, `BlockRemoved` per evicted copy, `AllBlocksCleared` on a
  reset), which the engine takes after each step.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tandem.kvcache.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from tandem.kvcache.hashing import BlockHash, external_hash


@dataclass(slots=True, eq=False)
class KVBlock:
    """One physical KV block."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None


@dataclass(slots=True)
class BlockPool:
    """Fixed set of KV blocks, a free queue in eviction order, and the prefix-cache map."""

    num_gpu_blocks: int
    enable_prefix_caching: bool = True
    kv_events: bool = False
    """Record vLLM's KV cache events for `take_events`."""
    _blocks: list[KVBlock] = field(init=False)
    _free: OrderedDict[int, KVBlock] = field(init=False)
    _cached: dict[BlockHash, dict[int, KVBlock]] = field(init=False)
    """Each cached hash, with the blocks holding it (the first one serves hits)."""
    _events: list[KVEvent] = field(init=False, default_factory=list)
    num_evictions: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks must be at least 2 (block 0 is reserved)")
        self._blocks = [KVBlock(block_id=i) for i in range(self.num_gpu_blocks)]
        self._blocks[0].ref_cnt = 1  # the null block is never free
        self._free = OrderedDict((b.block_id, b) for b in self._blocks[1:])
        self._cached = {}

    @property
    def capacity(self) -> int:
        """Usable blocks (all but the null block)."""
        return self.num_gpu_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now, counting evictable cached ones."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks in use by requests (vLLM's kv_cache_usage_perc)."""
        return 1.0 - self.num_free_blocks / self.capacity

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def block(self, block_id: int) -> KVBlock:
        return self._blocks[block_id]

    def longest_cached_prefix(self, block_hashes: Iterable[BlockHash]) -> list[KVBlock]:
        """Cached blocks for the leading hashes, stopping at the first miss."""
        hits: list[KVBlock] = []
        if not self.enable_prefix_caching:
            return hits
        for block_hash in block_hashes:
            copies = self._cached.get(block_hash)
            if not copies:
                break
            hits.append(next(iter(copies.values())))
        return hits

    def front_holds_cached(self, count: int) -> bool:
        """Whether any of the next `count` blocks `allocate` would hand out holds a hash."""
        return any(
            block.block_hash is not None for block in itertools.islice(self._free.values(), count)
        )

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on (possibly free) cached blocks so they cannot be evicted."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def allocate(self, num_blocks: int) -> list[KVBlock] | None:
        """Hand out `num_blocks` blocks, evicting least recently freed ones; None if short."""
        if num_blocks > len(self._free):
            return None
        allocated: list[KVBlock] = []
        for _ in range(num_blocks):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_cnt = 1
            allocated.append(block)
        return allocated

    def free(self, blocks: Sequence[KVBlock]) -> None:
        """Drop one reference per block, tail first. Unreferenced cached blocks join the back
        of the free queue (least recently freed evicted first); unreferenced blocks with no
        hash, which no request can hit, go to the front, to be reused first (vLLM 0.32's
        `free_blocks`)."""
        uncached: list[KVBlock] = []
        for block in reversed(blocks):
            block.ref_cnt -= 1
            if block.ref_cnt < 0:
                raise RuntimeError(f"KV block {block.block_id} freed more often than taken")
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    uncached.append(block)
                else:
                    self._free[block.block_id] = block
        for block in reversed(uncached):
            self._free[block.block_id] = block
            self._free.move_to_end(block.block_id, last=False)

    def register(
        self,
        blocks: Sequence[KVBlock],
        hashes: Sequence[BlockHash],
        parent: BlockHash | None,
        token_ids: Sequence[int],
        block_size: int,
    ) -> None:
        """Register full, computed blocks of one request under their hashes (`parent`: the
        hash of the block before the first, None at the prompt's start; `token_ids`: the
        blocks' tokens, concatenated), as vLLM's `cache_full_blocks` does."""
        if not self.enable_prefix_caching or not blocks:
            return
        for block, block_hash in zip(blocks, hashes, strict=True):
            if block.block_hash is not None:
                self._drop_hash(block)
            block.block_hash = block_hash
            self._cached.setdefault(block_hash, {})[block.block_id] = block
        if self.kv_events:
            self._events.append(
                BlockStored(
                    block_hashes=tuple(external_hash(h) for h in hashes),
                    parent_block_hash=None if parent is None else external_hash(parent),
                    token_ids=tuple(token_ids),
                    block_size=block_size,
                )
            )

    def take_events(self) -> list[KVEvent]:
        """The KV cache events recorded since the last call, in order."""
        events, self._events = self._events, []
        return events

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any block is in use."""
        if self.num_free_blocks != self.capacity:
            return False
        for copies in self._cached.values():
            for block in copies.values():
                block.block_hash = None
        self._cached.clear()
        if self.kv_events:
            self._events.append(AllBlocksCleared())
        return True

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is not None:
            self._drop_hash(block)
            self.num_evictions += 1

    def _drop_hash(self, block: KVBlock) -> None:
        assert block.block_hash is not None
        copies = self._cached[block.block_hash]
        del copies[block.block_id]
        if not copies:
            del self._cached[block.block_hash]
        if self.kv_events:
            self._events.append(BlockRemoved((external_hash(block.block_hash),)))
        block.block_hash = None
