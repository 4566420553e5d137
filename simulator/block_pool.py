"""Paged KV block pool with prefix caching, modelled on vLLM V1's `BlockPool`.

* A block holds `block_size` tokens. Block 0 is vLLM's reserved null block and never handed
  out, so usable capacity is `num_gpu_blocks - 1` and ids start at 1.
* A full block is identified by a hash chained from its parent block's hash and its own token
  ids (`hash_block_tokens`). A block whose hash is registered can be reused by any later
  request with the same prefix.
* Blocks whose reference count drops to zero go to the back of a free queue but keep their
  hash: they stay reusable until the pool needs space, and then the front of the queue (least
  recently freed) is evicted first. A request frees its blocks tail first, so a prefix's
  later blocks are evicted before its earlier ones (vLLM does the same).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BlockHash = bytes

# vLLM's default (`sha256`): SHA-256 of the pickled tuple, chained from NONE_HASH, which is
# the hash of the seed "vllm-none-hash" when PYTHONHASHSEED is unset
# (vllm-project/vllm: vllm/v1/core/kv_cache_utils.py, vllm/utils/hashing.py).
NONE_HASH: BlockHash = hashlib.sha256(
    pickle.dumps("vllm-none-hash", protocol=pickle.HIGHEST_PROTOCOL)
).digest()


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Hash of one full block: H((parent or NONE_HASH, tuple(token_ids), None))."""
    return _hash_block(parent if parent is not None else NONE_HASH, tuple(token_ids))


@functools.lru_cache(maxsize=1 << 18)
def _hash_block(parent: BlockHash, token_ids: tuple[int, ...]) -> BlockHash:
    # Remembered: shared prefixes (system prompts) are hashed once per pod process, not once
    # per request; 2^18 entries is about 60 MB.
    key = (parent, token_ids, None)
    return hashlib.sha256(pickle.dumps(key, protocol=pickle.HIGHEST_PROTOCOL)).digest()


_RUN_BLOCKS = 64
"""Prompt blocks hashed, and remembered, together (`_hash_run`)."""


def hash_prompt_blocks(token_ids: Sequence[int], block_size: int) -> list[BlockHash]:
    """Chained hashes of every full block of `token_ids` (a trailing partial block has none)."""
    hashes: list[BlockHash] = []
    full = len(token_ids) // block_size * block_size
    span = block_size * _RUN_BLOCKS
    for start in range(0, full, span):
        parent = hashes[-1] if hashes else NONE_HASH
        run = tuple(token_ids[start : min(start + span, full)])
        hashes += _hash_run(parent, run, block_size)
    return hashes


@functools.lru_cache(maxsize=4096)
def _hash_run(
    parent: BlockHash, token_ids: tuple[int, ...], block_size: int
) -> tuple[BlockHash, ...]:
    # Remembered by runs of 64 blocks: a prompt's shared prefix (a system prompt), or a
    # whole prompt sent again, costs one lookup per run instead of one per block; 4,096 runs
    # of 1,024 tokens are about 50 MB.
    hashes: list[BlockHash] = []
    for start in range(0, len(token_ids), block_size):
        parent = _hash_block(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return tuple(hashes)


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
    _blocks: list[KVBlock] = field(init=False)
    _free: OrderedDict[int, KVBlock] = field(init=False)
    _cached: dict[BlockHash, KVBlock] = field(init=False)
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
            cached = self._cached.get(block_hash)
            if cached is None:
                break
            hits.append(cached)
        return hits

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
        """Drop one reference per block, tail first; unreferenced blocks join the free queue."""
        for block in reversed(blocks):
            block.ref_cnt -= 1
            if block.ref_cnt < 0:
                raise RuntimeError(f"KV block {block.block_id} freed more often than taken")
            if block.ref_cnt == 0:
                self._free[block.block_id] = block

    def cache(self, block: KVBlock, block_hash: BlockHash) -> None:
        """Register a full, computed block under its hash (first writer wins)."""
        if not self.enable_prefix_caching or block.block_hash is not None:
            return
        if block_hash in self._cached:
            return
        block.block_hash = block_hash
        self._cached[block_hash] = block

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any block is in use."""
        if self.num_free_blocks != self.capacity:
            return False
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        return True

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        del self._cached[block.block_hash]
        block.block_hash = None
        self.num_evictions += 1
