"""Decode runs: the simulated engine's fast-forward for virtual time.

While the running requests only decode — nothing can be admitted, every block they grow into
is free — each step is determined in advance: the same sequences, each context one token
longer, less those that sampled their last token. A virtual-time caller plans such a run of
steps at once and applies it lazily, request by request; the live pod always calls
`Engine.step`. A test holds the records of both ways equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tandem.costmodel.step import decode_step_seconds
from tandem.simulator.block_pool import BlockPool
from tandem.simulator.request import EngineRequest, FinishReason, RequestOutput, RequestStatus
from tandem.simulator.scheduler import BatchScheduler
from tandem.simulator.stats import EngineStats

if TYPE_CHECKING:
    from tandem.simulator.engine import EngineConfig


def _new_blocks(computed: int, held: int, steps: int, block_size: int) -> int:
    """Blocks a decoding request holding `held` for `computed` tokens takes in `steps` steps."""
    return max(0, -(-(computed + steps) // block_size) - held)


@dataclass(slots=True, eq=False)
class DecodeRun:
    """Pure decode steps of the running requests, planned from `start` and applied lazily
    (`Engine.plan_decode_run`). Step i ends at `ends[i]` and starts at the one before's end.
    Request j (in running order) takes part in the first `limits[j]` steps; a finishing one
    ends with the last of them."""

    start: float
    requests: list[EngineRequest]
    computed: list[int]
    """Each request's computed tokens when the run was planned."""
    held: list[int]
    """Blocks each request held when the run was planned."""
    limits: list[int]
    """Steps each request takes part in."""
    finishing: list[bool]
    """Whether each request ends with its last step (else it is still running after)."""
    applied: list[int]
    """Steps applied to each request so far."""
    ends: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    """Requests in each step."""
    finished: list[int] = field(default_factory=list)
    """finished[i]: requests that ended with steps 0..i."""
    finishers: dict[int, list[int]] = field(default_factory=dict)
    """The requests (indices) each step that ends some ends."""
    recorded: int = 0
    """Steps whose step-wide statistics are recorded."""

    @property
    def finish_steps(self) -> list[int]:
        """Steps some request ends with, in order."""
        return sorted(self.finishers)

    def num_running(self, steps: int) -> int:
        """Running requests once the first `steps` steps have started (a finisher leaves
        the running set when its last step starts, as with `Engine.step`)."""
        return len(self.requests) - (self.finished[steps - 1] if steps > 0 else 0)


class DecodeRuns:
    """`Engine`'s decode-run methods (a mixin: they read and change the engine's state)."""

    config: EngineConfig
    scheduler: BatchScheduler
    pool: BlockPool
    stats: EngineStats

    def _samples(self, request: EngineRequest, first: int, count: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _register_full_blocks(self, request: EngineRequest) -> None:
        raise NotImplementedError

    def _finish_reason(self, request: EngineRequest) -> FinishReason | None:
        raise NotImplementedError

    def _finish(
        self, request: EngineRequest, reason: FinishReason, now: float, error: str | None = None
    ) -> RequestOutput:
        raise NotImplementedError

    def plan_decode_run(self, now: float, max_steps: int) -> DecodeRun | None:
        """The next steps from `now`, at most `max_steps`, that `step` would run as pure
        decode steps of the current running requests; None when the next step is not one.

        The run goes on past a request's finish only while no waiting request could take
        the blocks it frees (else it ends with that step), and stops short of the finish of
        a request that hands its KV to a remote decode."""
        scheduler = self.scheduler
        running = scheduler.running
        budget = self.config.batching.max_num_batched_tokens - len(running)
        if not running or budget < 0 or scheduler.may_admit(budget):
            return None
        admits_after_finish = any(r.status is RequestStatus.WAITING for r in scheduler.waiting)
        steps = max_steps
        computed: list[int] = []
        limits: list[int] = []
        for request in running:
            done = request.num_computed_tokens
            if done < request.num_prompt_tokens or request.num_tokens - done != 1:
                return None  # still prefilling
            limit = self._tokens_before_finish(request)
            if request.remote_decode:
                steps = min(steps, limit - 1)
            elif admits_after_finish:
                steps = min(steps, limit)
            computed.append(done)
            limits.append(limit)
        held = [len(r.blocks) for r in running]
        steps = min(steps, max(limits))  # none left after the last finish
        steps = self._steps_with_free_blocks(computed, held, limits, steps)
        steps = self._steps_before_freed_blocks_matter(computed, held, limits, steps)
        if steps <= 0:
            return None
        run = DecodeRun(
            start=now,
            requests=list(running),
            computed=computed,
            held=held,
            limits=[min(limit, steps) for limit in limits],
            finishing=[limit <= steps for limit in limits],
            applied=[0] * len(running),
        )
        self._time_run(run, steps)
        return run

    def _time_run(self, run: DecodeRun, steps: int) -> None:
        """Fill in the run's step ends, the requests in each step, and its finishers."""
        finishers: dict[int, list[int]] = {}
        for index, (limit, finishing) in enumerate(zip(run.limits, run.finishing, strict=True)):
            if finishing:
                finishers.setdefault(limit - 1, []).append(index)
        seqs, context = len(run.requests), sum(run.computed)
        clock = run.start
        finished = 0
        for step in range(steps):
            clock = clock + decode_step_seconds(self.config.step, seqs, context)
            run.ends.append(clock)
            run.seqs.append(seqs)
            for index in finishers.get(step, ()):
                seqs -= 1
                context -= run.computed[index] + step
                finished += 1
            run.finished.append(finished)
            context += seqs  # every remaining context is one token longer in the next step
        run.finishers = finishers

    def _growth(self, run: DecodeRun, index: int, steps: int) -> int:
        """New blocks the run's `index`-th request takes in its first `steps` steps."""
        return _new_blocks(
            run.computed[index],
            run.held[index],
            min(steps, run.limits[index]),
            self.config.block_size,
        )

    def apply_decode_run(
        self, run: DecodeRun, steps: int, requests: Iterable[int] | None = None
    ) -> list[tuple[RequestOutput, list[float]]]:
        """Apply the run's first `steps` steps to its requests (or to the requests at the
        given indices only): each takes one token per step it is in, as `step` would give
        it, and a finisher ends with its last. One output per request that got tokens, with
        the time each token was sampled. Finishers free their blocks after every request's
        steps are applied, as a step frees them after it grew everyone's."""
        outputs: list[tuple[RequestOutput, list[float]]] = []
        finishing: list[tuple[int, RequestOutput, list[float]]] = []
        indices = range(len(run.requests)) if requests is None else requests
        for index in indices:
            done, upto = run.applied[index], min(steps, run.limits[index])
            if upto <= done:
                continue
            output, times = self._apply_run_steps(run, index, done, upto)
            if run.finishing[index] and upto == run.limits[index]:
                finishing.append((index, output, times))
            else:
                outputs.append((output, times))
        for index, output, times in finishing:
            outputs.append((self._finish_run_request(run, index, output, times[-1]), times))
        if requests is None:
            self._record_run_steps(run, steps)
        return outputs

    def _apply_run_steps(
        self, run: DecodeRun, index: int, done: int, upto: int
    ) -> tuple[RequestOutput, list[float]]:
        request = run.requests[index]
        count = upto - done
        if not self.scheduler.grow(request, count):
            raise RuntimeError(f"{request.request_id}: no KV blocks for a decode run")
        tokens = self._samples(request, len(request.output_token_ids), count)
        request.output_token_ids.extend(tokens)
        request.num_computed_tokens += count
        self._register_full_blocks(request)
        times = run.ends[done:upto]
        if done == 0:
            assert request.last_token_time is not None
            self.stats.inter_token_latency.observe(times[0] - request.last_token_time)
        request.last_token_time = times[-1]
        run.applied[index] = upto
        return RequestOutput(request.request_id, tokens), times

    def _finish_run_request(
        self, run: DecodeRun, index: int, output: RequestOutput, end: float
    ) -> RequestOutput:
        request = run.requests[index]
        reason = self._finish_reason(request)
        assert reason is not None
        self.scheduler.running.remove(request)
        final = self._finish(request, reason, end)
        return RequestOutput(
            request.request_id,
            output.new_token_ids,
            reason,
            num_prompt_tokens=final.num_prompt_tokens,
            num_cached_tokens=final.num_cached_tokens,
            kv_transfer_params=final.kv_transfer_params,
        )

    def _record_run_steps(self, run: DecodeRun, steps: int) -> None:
        """Step-wide statistics of the run's steps up to `steps` (per-request ones are
        recorded as each request's steps are applied)."""
        stats = self.stats
        for step in range(run.recorded, steps):
            seqs = run.seqs[step]
            if step > 0:
                stats.inter_token_latency.observe_many(run.ends[step] - run.ends[step - 1], seqs)
            stats.generation_tokens += seqs
            stats.iteration_tokens.observe(seqs)
        run.recorded = max(run.recorded, steps)

    def decode_run_kv_usage(self, run: DecodeRun, steps: int) -> float:
        """`kv_usage` as `step` would leave it once the run's first `steps` steps started:
        the pool as the run's applied part left it, less the blocks the rest of those steps
        take, plus what their finishers give back."""
        taken = 0
        finishers: list[int] = []
        for index, (done, limit) in enumerate(zip(run.applied, run.limits, strict=True)):
            upto = min(steps, limit)
            if upto > done:
                taken += self._growth(run, index, upto) - self._growth(run, index, done)
                if upto == limit and run.finishing[index]:
                    finishers.append(index)
        freed = 0
        refs: dict[int, int] = {}
        for index in finishers:
            freed += self._growth(run, index, run.limits[index])  # its own new blocks
            for block in run.requests[index].blocks[: run.held[index]]:
                left = refs.get(block.block_id, block.ref_cnt) - 1
                refs[block.block_id] = left
                freed += left == 0
        return 1.0 - (self.pool.num_free_blocks - taken + freed) / self.pool.capacity

    @staticmethod
    def _tokens_before_finish(request: EngineRequest) -> int:
        """Tokens the request produces until `_finish_reason` ends it."""
        limit = request.max_tokens
        if request.eos_after is not None:
            limit = min(limit, max(request.eos_after, request.min_tokens))
        return limit - len(request.output_token_ids)

    def _steps_with_free_blocks(
        self, computed: Sequence[int], held: Sequence[int], limits: Sequence[int], steps: int
    ) -> int:
        """The most steps, up to `steps`, whose new blocks the pool has free now (blocks the
        run's finishers free are not counted on)."""
        block_size = self.config.block_size

        def growth(count: int) -> int:
            return sum(
                _new_blocks(c, h, min(count, limit), block_size)
                for c, h, limit in zip(computed, held, limits, strict=True)
            )

        free = self.pool.num_free_blocks
        low, high = 0, max(steps, 0)
        if growth(high) <= free:
            return high  # the common case: the pool is not short
        # Short of blocks: request j first needs one in step h*B - c + 1 (counting from 1),
        # then every B steps. If the (free + 1)-th first need comes before anyone's second,
        # the run ends the step before it.
        firsts = sorted(
            need
            for c, h, limit in zip(computed, held, limits, strict=True)
            if (need := h * block_size - c + 1) <= min(limit, high)
        )
        if len(firsts) > free and firsts[free] < firsts[0] + block_size:
            return firsts[free] - 1
        while low < high:
            middle = (low + high + 1) // 2
            if growth(middle) <= free:
                low = middle
            else:
                high = middle - 1
        return low

    def _steps_before_freed_blocks_matter(
        self, computed: Sequence[int], held: Sequence[int], limits: Sequence[int], steps: int
    ) -> int:
        """The most steps, up to `steps`, over which applying the run request by request
        takes the same blocks as stepping would. A finisher frees its unfilled last block to
        the front of the free queue, where the next block any request grows into comes from;
        applied lazily, that grow may already have taken another block, which matters when
        the blocks it could take hold cached hashes (one is evicted, the other not). So the
        run ends with the first such finish when requests grow after it into a front that
        holds cached blocks."""
        block_size = self.config.block_size

        def growth(count: int) -> int:
            return sum(
                _new_blocks(c, h, min(count, limit), block_size)
                for c, h, limit in zip(computed, held, limits, strict=True)
            )

        finishes = sorted(limit for limit in limits if limit < steps)
        if not finishes or growth(steps) == growth(finishes[0]):
            return steps
        if not self.pool.front_holds_cached(growth(steps)):
            return steps  # grows take blocks without hashes, whichever they are
        return finishes[0]
