"""vLLM's prefix-cache block hashes (vllm-project/vllm: vllm/v1/core/kv_cache_utils.py).

A full block of `block_size` tokens is named by H((parent, tuple(token_ids), extra_keys)),
chained from the previous block's hash; the first block's parent is NONE_HASH = H(seed). With
the default `sha256` algorithm H is SHA-256 of the pickled tuple, and the seed is
`$PYTHONHASHSEED` when set, else "vllm-none-hash". KV events carry each hash as the integer
of its digest's low 64 bits (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`, the default).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Sequence

BlockHash = bytes
"""A block's full digest, as the engine keys its cache."""

DEFAULT_HASH_SEED = "vllm-none-hash"
HASH_ALGORITHMS = ("sha256",)
"""The algorithms implemented here (vLLM's default; `--prefix-caching-hash-algo`)."""


def _sha256(value: object) -> BlockHash:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


@functools.lru_cache(maxsize=16)
def none_hash(seed: str = DEFAULT_HASH_SEED) -> BlockHash:
    """The parent of every prefix's first block."""
    return _sha256(seed)


NONE_HASH: BlockHash = none_hash()


def external_hash(block_hash: BlockHash) -> int:
    """The block hash as KV events carry it: the digest's low 64 bits."""
    return int.from_bytes(block_hash, "big") & ((1 << 64) - 1)


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Hash of one full block: H((parent or NONE_HASH, tuple(token_ids), None))."""
    return _hash_block(parent if parent is not None else NONE_HASH, tuple(token_ids))


@functools.lru_cache(maxsize=1 << 18)
def _hash_block(parent: BlockHash, token_ids: tuple[int, ...]) -> BlockHash:
    # Remembered: shared prefixes (system prompts) are hashed once per process, not once
    # per request; 2^18 entries is about 60 MB.
    return _sha256((parent, token_ids, None))


_RUN_BLOCKS = 64
"""Prompt blocks hashed, and remembered, together (`_hash_run`)."""


def hash_prompt_blocks(
    token_ids: Sequence[int], block_size: int, parent: BlockHash | None = None
) -> list[BlockHash]:
    """Chained hashes of every full block of `token_ids` (a trailing partial block has none),
    the first chained from `parent` (NONE_HASH by default)."""
    hashes: list[BlockHash] = []
    full = len(token_ids) // block_size * block_size
    span = block_size * _RUN_BLOCKS
    first_parent = parent if parent is not None else NONE_HASH
    for start in range(0, full, span):
        run = tuple(token_ids[start : min(start + span, full)])
        hashes += _hash_run(hashes[-1] if hashes else first_parent, run, block_size)
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


def external_prompt_hashes(
    token_ids: Sequence[int], block_size: int, parent: BlockHash | None = None
) -> list[int]:
    """`hash_prompt_blocks`, as KV events name the blocks (`external_hash`); remembered by
    runs, like the digests."""
    hashes: list[int] = []
    full = len(token_ids) // block_size * block_size
    span = block_size * _RUN_BLOCKS
    last = parent if parent is not None else NONE_HASH
    for start in range(0, full, span):
        run = tuple(token_ids[start : min(start + span, full)])
        external, last = _external_run(last, run, block_size)
        hashes += external
    return hashes


@functools.lru_cache(maxsize=4096)
def _external_run(
    parent: BlockHash, token_ids: tuple[int, ...], block_size: int
) -> tuple[tuple[int, ...], BlockHash]:
    digests = _hash_run(parent, token_ids, block_size)
    return tuple(external_hash(d) for d in digests), digests[-1]
