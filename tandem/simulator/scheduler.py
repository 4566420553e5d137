"""Continuous batching with chunked prefill, as vLLM V1's scheduler does it.

Each step has a token budget (`max_num_batched_tokens`). Running requests are served first,
in order: a decoding request takes one token, a partly prefilled one takes the rest of its
prompt up to the budget. When a running request cannot get a KV block, the most recently
admitted running request is preempted (its blocks freed, to be recomputed later) and put back
at the head of the waiting queue. Only when nothing was preempted are waiting requests
admitted, FCFS, while there is budget and fewer than `max_num_seqs` are running; the head
of the queue blocks the rest when it does not fit (vllm-project/vllm:
vllm/v1/core/sched/scheduler.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tandem.simulator.block_pool import BlockPool, KVBlock
from tandem.simulator.kv_connector import RemoteLoad
from tandem.simulator.request import EngineRequest, RequestStatus


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """vLLM's scheduler limits; defaults are `vllm serve` on a >=70 GiB GPU (H100)."""

    block_size: int = 16
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    long_prefill_token_threshold: int = 0
    """Largest prefill chunk per request and step; 0 means no limit beyond the budget."""


@dataclass(slots=True)
class ScheduledChunk:
    """`num_tokens` tokens of `request` computed this step (not frozen: one is built per
    running request and step, and a frozen dataclass's constructor costs several times more)."""

    request: EngineRequest
    num_tokens: int
    context_tokens: int

    @property
    def completes_prompt(self) -> bool:
        """True when this chunk reaches the end of the known tokens, so a token is sampled."""
        return self.context_tokens + self.num_tokens >= self.request.num_tokens


@dataclass(slots=True)
class Schedule:
    """The outcome of one scheduling pass."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[EngineRequest] = field(default_factory=list)
    remote_loads: list[RemoteLoad] = field(default_factory=list)
    newly_admitted: list[EngineRequest] = field(default_factory=list)


def _blocks_needed(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


@dataclass(slots=True)
class BatchScheduler:
    """Owns the waiting and running queues and decides each step's batch."""

    config: BatchingConfig
    pool: BlockPool
    waiting: deque[EngineRequest] = field(default_factory=deque)
    running: list[EngineRequest] = field(default_factory=list)

    def schedule(self) -> Schedule:
        out = Schedule()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def free(self, request: EngineRequest) -> None:
        """Give a request's blocks back to the pool."""
        self.pool.free(request.blocks)
        request.blocks = []
        request.num_registered_blocks = 0

    def _chunk_size(self, request: EngineRequest, budget: int) -> int:
        remaining = request.num_tokens - request.num_computed_tokens
        threshold = self.config.long_prefill_token_threshold
        if threshold > 0:
            remaining = min(remaining, threshold)
        return min(remaining, budget)

    def _schedule_running(self, out: Schedule, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = self._chunk_size(request, budget)
            if num_new <= 0:
                index += 1
                continue
            while not self.grow(request, num_new):
                victim = self.running.pop()
                self._preempt(victim, out)
                if victim is request:
                    break
            else:
                out.chunks.append(ScheduledChunk(request, num_new, request.num_computed_tokens))
                budget -= num_new
                index += 1
        return budget

    def _schedule_waiting(self, out: Schedule, budget: int) -> None:
        skipped: list[EngineRequest] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if request.status is RequestStatus.WAITING_FOR_REMOTE_KV:
                skipped.append(self.waiting.popleft())
                continue
            if request.remote is not None and not request.remote_kv_loaded:
                if not self._admit_remote(request, out):
                    break
                skipped.append(self.waiting.popleft())
                continue
            num_new = self._admit_local(request, budget, out)
            if num_new is None:
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.chunks.append(ScheduledChunk(request, num_new, request.num_computed_tokens))
            budget -= num_new
        self.waiting.extendleft(reversed(skipped))

    def _cached_prefix(self, request: EngineRequest) -> list[KVBlock]:
        if request.blocks or request.num_computed_tokens:
            return []
        # At least one prompt token must be computed to sample from (vLLM: num_tokens - 1).
        limit = (request.num_tokens - 1) // self.config.block_size
        return self.pool.longest_cached_prefix(request.block_hashes[:limit])

    def may_admit(self, budget: int) -> bool:
        """Whether a pass with `budget` tokens left after the running requests would admit a
        waiting request — or, as far as this can tell, one that does no more than grow the
        running requests' blocks could. A head that does not fit now stays out while the
        pool's free blocks only shrink: taking a free block leaves it short by as much or
        more, whether or not that block was one of its cached hits."""
        if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
            return False
        for request in self.waiting:
            if request.status is RequestStatus.WAITING_FOR_REMOTE_KV:
                continue  # skipped, as `_schedule_waiting` does
            remaining = request.num_tokens - request.num_computed_tokens
            threshold = self.config.long_prefill_token_threshold
            if remaining > budget or 0 < threshold < remaining:
                return True  # a partial chunk: its size depends on hits; do not reason
            hits = self._cached_prefix(request)
            return self._fits(request, hits, request.num_tokens)
        return False

    def _fits(self, request: EngineRequest, hits: list[KVBlock], total_tokens: int) -> bool:
        """Whether the pool can give `request` cached `hits` plus new blocks for
        `total_tokens` tokens."""
        to_allocate = (
            _blocks_needed(total_tokens, self.config.block_size) - len(request.blocks) - len(hits)
        )
        evictable_hits = sum(1 for block in hits if block.ref_cnt == 0)
        return max(to_allocate, 0) <= self.pool.num_free_blocks - evictable_hits

    def _take_blocks(self, request: EngineRequest, hits: list[KVBlock], total_tokens: int) -> bool:
        """Reserve cached `hits` plus new blocks so `request` covers `total_tokens` tokens."""
        if not self._fits(request, hits, total_tokens):
            return False
        to_allocate = (
            _blocks_needed(total_tokens, self.config.block_size) - len(request.blocks) - len(hits)
        )
        self.pool.touch(hits)
        new_blocks = self.pool.allocate(max(to_allocate, 0)) or []
        request.blocks.extend(hits)
        request.blocks.extend(new_blocks)
        return True

    def _admit_local(self, request: EngineRequest, budget: int, out: Schedule) -> int | None:
        hits = self._cached_prefix(request)
        computed = max(request.num_computed_tokens, len(hits) * self.config.block_size)
        num_new = min(self._chunk_size(request, budget), request.num_tokens - computed)
        if not self._take_blocks(request, hits, computed + num_new):
            return None
        request.num_computed_tokens = computed
        request.num_registered_blocks = max(request.num_registered_blocks, len(hits))
        out.newly_admitted.append(request)
        return num_new

    def _admit_remote(self, request: EngineRequest, out: Schedule) -> bool:
        """Reserve blocks for the whole prompt and ask the shell to load what is not cached."""
        assert request.remote is not None
        hits = self._cached_prefix(request)
        local = len(hits) * self.config.block_size
        if not self._take_blocks(request, hits, request.num_tokens):
            return False
        request.num_computed_tokens = local
        request.num_registered_blocks = len(hits)
        request.status = RequestStatus.WAITING_FOR_REMOTE_KV
        out.newly_admitted.append(request)
        out.remote_loads.append(
            RemoteLoad(request.request_id, request.remote, request.num_tokens - local)
        )
        return True

    def grow(self, request: EngineRequest, num_new: int) -> bool:
        """Give `request` blocks for `num_new` more tokens; False if the pool is short."""
        total = request.num_computed_tokens + num_new
        if total <= len(request.blocks) * self.config.block_size:
            return True  # the blocks it holds have room (most decode steps)
        return self._take_blocks(request, [], total)

    def _preempt(self, request: EngineRequest, out: Schedule) -> None:
        self.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        request.remote = None  # recompute preemption: the prompt is recomputed locally
        self.waiting.appendleft(request)
        out.preempted.append(request)
