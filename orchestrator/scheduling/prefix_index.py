"""Approximate prefix index: which endpoint probably holds which prompt prefix.

The orchestrator cannot see the pods' KV caches, so it remembers its own routing decisions:
after a request is sent, the hashes of its prompt's leading blocks are recorded for the
endpoints that computed them. A later request matching the first k hashes is predicted to
find k blocks cached there. Blocks are fixed-size runs of characters (`block_size_tokens`
estimated tokens of `chars_per_token` characters each, llm-d's "estimate" rule), hashed in a
chain so a block only matches after the same parent. Each endpoint's entries are an LRU
bounded by its capacity, so memory stays bounded and old prefixes age out the way the pod's
own cache would evict them (llm-d/llm-d-router: approximateprefix, prefixhash/hashing.go).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence

DEFAULT_BLOCK_SIZE_TOKENS = 64
"""llm-d floors the approximate block size to 64 tokens (llm-d/llm-d-router#1158)."""
DEFAULT_MAX_PREFIX_TOKENS = 131072
DEFAULT_LRU_CAPACITY_PER_SERVER = 31250
DEFAULT_CHARS_PER_TOKEN = 4.0
HASHED_BLOCKS_KEPT = 1 << 20
"""Block hashes of recent prompts kept (about 40 MB), so that a prompt seen again — a retry,
a benchmark's repeated prompts — is hashed once."""


_RUN_BLOCKS = 16


@functools.lru_cache(maxsize=4096)
def _hash_run(parent: bytes, data: bytes, block_chars: int) -> tuple[tuple[int, ...], bytes]:
    """The chained hashes of `data`'s blocks from `parent`, and the last digest. Remembered
    by runs of blocks: a prefix many prompts share (a system prompt) costs one lookup per run
    instead of one hash per block; 4,096 runs of 4 KiB are about 20 MB."""
    hashes: list[int] = []
    for start in range(0, len(data), block_chars):
        parent = hashlib.blake2b(parent + data[start : start + block_chars], digest_size=8).digest()
        hashes.append(int.from_bytes(parent, "big"))
    return tuple(hashes), parent


class PrefixIndex:
    """Per-endpoint LRU sets of chained block hashes, with a reverse map for matching."""

    def __init__(
        self,
        *,
        block_size_tokens: int = DEFAULT_BLOCK_SIZE_TOKENS,
        max_prefix_tokens: int = DEFAULT_MAX_PREFIX_TOKENS,
        lru_capacity_per_server: int = DEFAULT_LRU_CAPACITY_PER_SERVER,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        seed: str = "",
    ) -> None:
        if block_size_tokens < 1 or lru_capacity_per_server < 1 or chars_per_token <= 0:
            raise ValueError("prefix index sizes must be positive")
        self.block_size_tokens = block_size_tokens
        self.block_chars = max(1, round(block_size_tokens * chars_per_token))
        self.max_blocks = max(1, max_prefix_tokens // block_size_tokens)
        self.default_capacity = lru_capacity_per_server
        self._seed = hashlib.blake2b(seed.encode(), digest_size=8).digest()
        self._entries: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        self._hashed: OrderedDict[tuple[int, int], tuple[int, ...]] = OrderedDict()
        self._hashed_blocks = 0

    def hashes_like(self, other: PrefixIndex) -> bool:
        """Whether both indexes hash text the same way (so one's entries mean the same in
        the other) and default to the same per-endpoint capacity."""
        return (
            self.block_size_tokens == other.block_size_tokens
            and self.block_chars == other.block_chars
            and self.max_blocks == other.max_blocks
            and self.default_capacity == other.default_capacity
            and self._seed == other._seed
        )

    def hashes(self, text: str) -> list[int]:
        """Chained hashes of the text's full blocks, up to the match limit."""
        # Python's string hash and the length stand for the text: a collision (odds about
        # 2^-64 per pair) would only mispredict a cache hit, as the index itself can.
        key = (hash(text), len(text))
        hashes = self._hashed.get(key)
        if hashes is None:
            hashes = self._hashed[key] = self._compute_hashes(text)
            self._hashed_blocks += len(hashes)
            while self._hashed_blocks > HASHED_BLOCKS_KEPT:
                _, dropped = self._hashed.popitem(last=False)
                self._hashed_blocks -= len(dropped)
        else:
            self._hashed.move_to_end(key)
        return list(hashes)

    def _compute_hashes(self, text: str) -> tuple[int, ...]:
        data = text.encode()
        size = self.block_chars
        end = min(len(data) // size, self.max_blocks) * size
        parent = self._seed
        out: list[int] = []
        for start in range(0, end, size * _RUN_BLOCKS):
            hashes, parent = _hash_run(
                parent, data[start : min(start + size * _RUN_BLOCKS, end)], size
            )
            out += hashes
        return tuple(out)

    def match(self, hashes: Iterable[int], endpoint_name: str) -> int:
        """How many leading hashes are recorded for the endpoint."""
        entries = self._entries.get(endpoint_name)
        if not entries:
            return 0
        matched = 0
        for block_hash in hashes:
            if block_hash not in entries:
                break
            matched += 1
        return matched

    def record(self, endpoint_name: str, hashes: Sequence[int]) -> None:
        """Remember that the endpoint now holds these blocks.

        Recorded tail first, so a prompt's leading blocks are the most recently used and the
        last to age out (a prefix that is partly evicted still matches its head, as in the
        pod's own cache, which frees tail blocks first)."""
        entries = self._entries.setdefault(endpoint_name, OrderedDict())
        for block_hash in reversed(hashes):
            entries[block_hash] = None
            entries.move_to_end(block_hash)
        capacity = self._capacity.get(endpoint_name, self.default_capacity)
        while len(entries) > capacity:
            entries.popitem(last=False)

    def set_capacity(self, endpoint_name: str, blocks: int) -> None:
        """Bound the endpoint's entries, e.g. to its KV capacity in index blocks."""
        capacity = self._capacity[endpoint_name] = max(1, blocks)
        entries = self._entries.get(endpoint_name)
        while entries and len(entries) > capacity:
            entries.popitem(last=False)

    def forget(self, endpoint_name: str) -> None:
        """Drop an endpoint that left the pool."""
        self._entries.pop(endpoint_name, None)
        self._capacity.pop(endpoint_name, None)

    def size(self, endpoint_name: str) -> int:
        return len(self._entries.get(endpoint_name, ()))
