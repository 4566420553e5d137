"""The simulated vLLM engine core: pure, synchronous, driven by an injected clock.

The caller owns time. `step(now)` schedules one batch, computes how long it takes on the
profile's hardware, applies it, and returns outputs stamped with the step's end time; the
caller then waits (wall clock, scaled) or advances (virtual time) to that end before the
next step. Nothing here sleeps, reads a clock or does I/O, so the live HTTP pod and the
virtual-time planner run exactly the same code.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from tandem.costmodel.profiles import StepCoefficients
from tandem.costmodel.step import PrefillChunk, StepShape, step_seconds
from tandem.kvcache.events import KVEvent
from tandem.kvcache.hashing import hash_prompt_blocks
from tandem.logs import EventLog
from tandem.pods.launch import DEFAULT_KV_LEASE_DURATION_S, KVLoadFailurePolicy
from tandem.simulator.block_pool import BlockPool
from tandem.simulator.decode_run import DecodeRuns
from tandem.simulator.kv_connector import (
    HeldKV,
    HeldRequest,
    ProducerIdentity,
    RemoteLoad,
    RemotePrefill,
    producer_params,
    wants_remote_decode,
)
from tandem.simulator.request import (
    EngineRequest,
    FinishReason,
    RequestOutput,
    RequestStatus,
    StepResult,
)
from tandem.simulator.scheduler import BatchingConfig, BatchScheduler, Schedule, ScheduledChunk
from tandem.simulator.stats import EngineStats

logger = EventLog(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything that shapes one engine's behaviour."""

    num_gpu_blocks: int
    max_model_len: int
    step: StepCoefficients
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    enable_prefix_caching: bool = True
    kv_connector: bool = True
    """Without a KV connector, `kv_transfer_params` are ignored (as vLLM does)."""
    kv_lease_duration: int = DEFAULT_KV_LEASE_DURATION_S
    kv_load_failure_policy: KVLoadFailurePolicy = "fail"
    sample_vocab_size: int = 1000
    """Generated tokens are drawn from ids [0, sample_vocab_size)."""
    kv_events: bool = False
    """Record vLLM's KV cache events (`take_kv_events`)."""

    @property
    def block_size(self) -> int:
        return self.batching.block_size


class Engine(DecodeRuns):
    """One vLLM engine: queues, KV blocks, step timing, and both sides of the KV connector."""

    def __init__(self, config: EngineConfig, identity: ProducerIdentity) -> None:
        self.config = config
        self.identity = identity
        self.pool = BlockPool(
            config.num_gpu_blocks, config.enable_prefix_caching, kv_events=config.kv_events
        )
        self.scheduler = BatchScheduler(config.batching, self.pool)
        self.held = HeldKV(config.kv_lease_duration)
        self.stats = EngineStats(max_model_len=config.max_model_len)
        self._requests: dict[str, EngineRequest] = {}
        self._remote_loads: list[RemoteLoad] = []

    # -- queries ---------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_waiting_for_remote_kv(self) -> int:
        return sum(
            1 for r in self.scheduler.waiting if r.status is RequestStatus.WAITING_FOR_REMOTE_KV
        )

    def kv_fetch_stages(self) -> dict[str, int]:
        """Waiting remote-prefill requests by KV-load stage (vLLM's kv_fetch_by_stage)."""
        stages = {"waiting_to_start": 0, "in_progress": 0, "completed_waiting": 0}
        for request in self.scheduler.waiting:
            if request.remote is None:
                continue
            if request.status is RequestStatus.WAITING_FOR_REMOTE_KV:
                stages["in_progress"] += 1
            elif not request.remote_kv_loaded:
                stages["waiting_to_start"] += 1
            else:
                stages["completed_waiting"] += 1
        return stages

    @property
    def kv_usage(self) -> float:
        return self.pool.usage

    @property
    def has_schedulable_work(self) -> bool:
        """True when a step would compute something (remote loads in flight do not count)."""
        return bool(self.scheduler.running) or any(
            r.status is RequestStatus.WAITING for r in self.scheduler.waiting
        )

    def request(self, request_id: str) -> EngineRequest | None:
        return self._requests.get(request_id)

    # -- requests --------------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; its `kv_transfer_params` decide whether it is a P or D leg."""
        if request.request_id in self._requests:
            raise ValueError(f"request id {request.request_id} is already in the engine")
        request.block_hashes = hash_prompt_blocks(request.prompt_token_ids, self.config.block_size)
        if self.config.kv_connector:
            request.remote = RemotePrefill.parse(request.kv_transfer_params)
            request.remote_decode = wants_remote_decode(request.kv_transfer_params)
        else:
            request.kv_transfer_params = None
        self._requests[request.request_id] = request
        self.scheduler.waiting.append(request)

    def abort_request(self, request_id: str, now: float) -> RequestOutput | None:
        """Stop a request (client went away); frees its blocks. None if it already ended."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        if request in self.scheduler.running:
            self.scheduler.running.remove(request)
        elif request in self.scheduler.waiting:
            self.scheduler.waiting.remove(request)
        return self._finish(request, FinishReason.ABORT, now)

    def take_remote_loads(self) -> list[RemoteLoad]:
        """KV reads the scheduler started since the last call (consumer side)."""
        loads, self._remote_loads = self._remote_loads, []
        return loads

    def finish_remote_load(
        self,
        request_id: str,
        now: float,
        *,
        error: str | None = None,
        transfer_seconds: float = 0.0,
        transfer_bytes: int = 0,
    ) -> RequestOutput | None:
        """Report a KV read started by `take_remote_loads`; returns an output if it ended."""
        request = self._requests.get(request_id)
        if request is None or request.status is not RequestStatus.WAITING_FOR_REMOTE_KV:
            return None
        transfer = self.stats.transfer
        if error is None:
            assert request.remote is not None
            transfer.xfer_time.observe(transfer_seconds)
            transfer.post_time.observe(min(transfer_seconds, 1e-4))
            transfer.bytes_transferred.observe(transfer_bytes)
            transfer.num_descriptors.observe(request.remote.num_blocks)
            # All N - L tokens count as external; the last prompt token is then recomputed
            # to get logits to sample from, without being counted again (vLLM's
            # _update_waiting_for_remote_kv).
            request.num_computed_tokens = request.num_prompt_tokens - 1
            request.remote_kv_loaded = True
            request.status = RequestStatus.WAITING
            self._register_full_blocks(request)
            return None
        transfer.num_failed_transfers += 1
        logger.warning(
            "kv_load_failed",
            request_id=request_id,
            policy=self.config.kv_load_failure_policy,
            error=error,
        )
        if self.config.kv_load_failure_policy == "recompute":
            request.remote = None
            request.status = RequestStatus.WAITING
            request.num_computed_tokens = 0
            request.num_external_tokens = 0
            self.scheduler.free(request)
            return None
        self.scheduler.waiting.remove(request)
        return self._finish(request, FinishReason.ERROR, now, error=f"KV load failed: {error}")

    # -- producer side ---------------------------------------------------------------------

    def read_held(self, request_id: str, block_ids: tuple[int, ...], now: float) -> HeldRequest:
        """A consumer reads held blocks; raises KVReadError if they are gone."""
        return self.held.read(request_id, block_ids, now)

    def heartbeat_held(self, request_ids: Iterable[str], now: float) -> None:
        for request_id in request_ids:
            self.held.heartbeat(request_id, now)

    def release_held(self, request_id: str) -> bool:
        """The consumer is done with the blocks; free them. False if nothing was held."""
        blocks = self.held.release(request_id)
        if blocks is None:
            self.stats.transfer.num_notifications_after_expiry += 1
            return False
        self.pool.free(blocks)
        return True

    def expire_held(self, now: float) -> int:
        """Free blocks whose lease ran out; returns how many requests expired."""
        expired = self.held.expire(now)
        for request_id, blocks in expired:
            logger.info("kv_lease_expired", request_id=request_id, blocks=len(blocks))
            self.pool.free(blocks)
        self.stats.transfer.num_kv_expired_reqs += len(expired)
        return len(expired)

    # -- stepping --------------------------------------------------------------------------

    def step(self, now: float) -> StepResult:
        """Schedule, time and apply one step starting at `now`."""
        self.expire_held(now)
        schedule = self.scheduler.schedule()
        self._account_admissions(schedule, now)
        self._remote_loads.extend(schedule.remote_loads)
        self.stats.num_preemptions += len(schedule.preempted)
        prefill_chunks: list[PrefillChunk] = []
        decode_context_lens: list[int] = []
        for chunk in schedule.chunks:
            if self._is_decode(chunk):
                decode_context_lens.append(chunk.context_tokens)
            else:
                prefill_chunks.append(PrefillChunk(chunk.num_tokens, chunk.context_tokens))
        shape = StepShape(tuple(prefill_chunks), tuple(decode_context_lens))
        end = now + step_seconds(self.config.step, shape)
        outputs = [out for c in schedule.chunks if (out := self._apply(c, end)) is not None]
        if not shape.is_empty:
            sampled = sum(len(out.new_token_ids) for out in outputs)
            self.stats.iteration_tokens.observe(shape.num_prefill_tokens + sampled)
        return StepResult(
            start=now,
            end=end,
            outputs=tuple(outputs),
            num_prefill_tokens=shape.num_prefill_tokens,
            num_decode_seqs=shape.num_decode_seqs,
        )

    def _is_decode(self, chunk: ScheduledChunk) -> bool:
        return chunk.num_tokens == 1 and chunk.context_tokens >= chunk.request.num_prompt_tokens

    def _account_admissions(self, schedule: Schedule, now: float) -> None:
        for request in schedule.newly_admitted:
            if request.first_scheduled_time is None:
                request.first_scheduled_time = now
            if request.num_cached_tokens is not None:
                continue  # counted at first admission only, as vLLM does
            local = request.num_computed_tokens
            request.num_cached_tokens = local
            request.num_external_tokens = (
                request.num_prompt_tokens - local if request.remote is not None else 0
            )
            stats = self.stats
            stats.prefix_cache_queries += request.num_prompt_tokens
            stats.prefix_cache_hits += local
            if request.remote is not None or request.remote_decode:
                stats.external_prefix_cache_queries += request.num_prompt_tokens - local
                stats.external_prefix_cache_hits += request.num_external_tokens

    def _apply(self, chunk: ScheduledChunk, end: float) -> RequestOutput | None:
        request = chunk.request
        request.num_computed_tokens += chunk.num_tokens
        self._register_full_blocks(request)
        if not chunk.completes_prompt:
            return None
        token = self._sample(request)
        request.output_token_ids.append(token)
        self.stats.generation_tokens += 1
        if request.first_token_time is None:
            request.first_token_time = end
            self._account_prompt(request)
        else:
            assert request.last_token_time is not None
            self.stats.inter_token_latency.observe(end - request.last_token_time)
        request.last_token_time = end
        reason = self._finish_reason(request)
        if reason is None:
            return RequestOutput(request.request_id, (token,))
        self.scheduler.running.remove(request)
        final = self._finish(request, reason, end)
        return RequestOutput(
            request.request_id,
            (token,),
            reason,
            num_prompt_tokens=final.num_prompt_tokens,
            num_cached_tokens=final.num_cached_tokens,
            kv_transfer_params=final.kv_transfer_params,
        )

    def _account_prompt(self, request: EngineRequest) -> None:
        stats = self.stats
        stats.prompt_tokens += request.num_prompt_tokens
        cached = request.num_cached_tokens or 0
        external = request.num_external_tokens
        stats.prompt_tokens_by_source["local_cache_hit"] += cached
        stats.prompt_tokens_by_source["external_kv_transfer"] += external
        stats.prompt_tokens_by_source["local_compute"] += (
            request.num_prompt_tokens - cached - external
        )
        assert request.first_token_time is not None
        stats.ttft.observe(request.first_token_time - request.arrival_time)

    def _finish_reason(self, request: EngineRequest) -> FinishReason | None:
        produced = len(request.output_token_ids)
        if request.eos_after is not None and produced >= max(request.eos_after, request.min_tokens):
            return FinishReason.STOP
        if produced >= request.max_tokens:
            return FinishReason.LENGTH
        return None

    def _finish(
        self, request: EngineRequest, reason: FinishReason, now: float, error: str | None = None
    ) -> RequestOutput:
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        del self._requests[request.request_id]
        params = None
        if request.remote_decode and reason in (FinishReason.LENGTH, FinishReason.STOP):
            params = self._hold_for_remote_decode(request, now)
        else:
            self.scheduler.free(request)
        cached = request.num_cached_tokens or 0
        params_in = request.kv_transfer_params or {}
        if params_in.get("do_remote_prefill"):
            # The client sees the producer's prefix-cache hits (vLLM's output processor).
            cached = int(params_in.get("remote_prefill_cached_tokens") or 0)
        self._account_finish(request, reason, now, cached)
        return RequestOutput(
            request.request_id,
            (),
            reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=cached,
            kv_transfer_params=params,
            error=error,
        )

    def _hold_for_remote_decode(self, request: EngineRequest, now: float) -> dict[str, object]:
        num_prompt_blocks = -(-request.num_prompt_tokens // self.config.block_size)
        kept, extra = request.blocks[:num_prompt_blocks], request.blocks[num_prompt_blocks:]
        self.pool.free(extra)
        self.held.hold(request.request_id, kept, request.num_prompt_tokens, now)
        request.blocks = []
        return producer_params(
            self.identity,
            request.request_id,
            [block.block_id for block in kept],
            num_tokens=request.num_prompt_tokens,
            cached_tokens=request.num_cached_tokens or 0,
        )

    def _account_finish(
        self, request: EngineRequest, reason: FinishReason, now: float, cached: int
    ) -> None:
        stats = self.stats
        stats.request_success[reason.value] += 1
        if reason in (FinishReason.ABORT, FinishReason.ERROR) and not request.output_token_ids:
            return
        stats.e2e_latency.observe(now - request.arrival_time)
        stats.prompt_tokens_per_request.observe(request.num_prompt_tokens)
        stats.generation_tokens_per_request.observe(len(request.output_token_ids))
        stats.params_max_tokens.observe(request.max_tokens)
        if request.sample_index == 0:
            stats.max_generation_tokens_per_request.observe(request.max_tokens)
            stats.params_n.observe(request.n)
        stats.num_preemptions_per_request.observe(request.num_preemptions)
        stats.prefill_kv_computed_tokens.observe(request.num_prompt_tokens - cached)
        first_scheduled = request.first_scheduled_time
        first_token = request.first_token_time
        last_token = request.last_token_time
        if first_scheduled is None or first_token is None or last_token is None:
            return
        stats.queue_time.observe(first_scheduled - request.arrival_time)
        stats.prefill_time.observe(first_token - first_scheduled)
        stats.decode_time.observe(last_token - first_token)
        stats.inference_time.observe(last_token - first_scheduled)
        if len(request.output_token_ids) > 1:
            stats.time_per_output_token.observe(
                (last_token - first_token) / (len(request.output_token_ids) - 1)
            )

    def _register_full_blocks(self, request: EngineRequest) -> None:
        """Register the blocks that are now full and computed, the prompt's and then those
        its output fills, as vLLM caches generated blocks too (one `BlockStored` a call)."""
        size = self.config.block_size
        full = min(request.num_computed_tokens // size, len(request.blocks))
        first = request.num_registered_blocks
        if full <= first:
            return  # most decode steps
        tokens = request.prompt_token_ids
        if full * size > len(tokens):
            tokens = tokens + request.output_token_ids
        hashes = request.block_hashes
        if len(hashes) < full:  # blocks of generated tokens: hashed as they fill
            start = len(hashes)
            hashes += hash_prompt_blocks(
                tokens[start * size : full * size], size, hashes[-1] if hashes else None
            )
        self.pool.register(
            request.blocks[first:full], hashes[first:full], hashes[first - 1] if first else None,
            tokens[first * size : full * size], size,
        )  # fmt: skip
        request.num_registered_blocks = full

    def take_kv_events(self) -> list[KVEvent]:
        """KV cache events of the steps since the last call (empty unless enabled)."""
        return self.pool.take_events()

    def _sample(self, request: EngineRequest) -> int:
        return self._sample_at(request, len(request.output_token_ids))

    def _samples(self, request: EngineRequest, first: int, count: int) -> tuple[int, ...]:
        """`_sample_at` for positions first .. first + count - 1."""
        vocab, mask, step = self.config.sample_vocab_size, 2**64 - 1, 1442695040888963407
        mixed = (self._sample_seed(request) * 6364136223846793005 + first * step) & mask
        tokens = []
        for _ in range(count):
            tokens.append((mixed >> 33) % vocab)
            mixed = (mixed + step) & mask
        return tuple(tokens)

    def _sample_at(self, request: EngineRequest, position: int) -> int:
        """A deterministic 'sampled' token: a function of the prompt and the position."""
        seed = self._sample_seed(request)
        mixed = (seed * 6364136223846793005 + position * 1442695040888963407) & (2**64 - 1)
        return (mixed >> 33) % self.config.sample_vocab_size

    @staticmethod
    def _sample_seed(request: EngineRequest) -> int:
        seed = request.sample_seed
        if seed is None:
            tail = (request.num_prompt_tokens, request.prompt_token_ids[-8:])
            seed = request.sample_seed = zlib.crc32(repr(tail).encode())
        return seed
