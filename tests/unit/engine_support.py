"""Builders shared by the engine tests: a 10 ms-per-step engine and a run-to-idle loop."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tandem.costmodel.profiles import StepCoefficients
from tandem.pods.launch import KVLoadFailurePolicy
from tandem.simulator.engine import Engine, EngineConfig
from tandem.simulator.kv_connector import ProducerIdentity
from tandem.simulator.request import EngineRequest, FinishReason, RequestOutput
from tandem.simulator.scheduler import BatchingConfig

STEP_S = 0.01
"""Every non-empty step takes exactly this long with `TEN_MS_STEPS`."""

TEN_MS_STEPS = StepCoefficients(t_ovh=0.0, t_w=STEP_S, c_lin=0.0, c_attn=0.0, c_kv=0.0)
BLOCK_SIZE = 4


def make_engine(
    *,
    num_gpu_blocks: int = 64,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 64,
    long_prefill_token_threshold: int = 0,
    enable_prefix_caching: bool = True,
    kv_load_failure_policy: KVLoadFailurePolicy = "fail",
    engine_id: str = "engine-0",
    side_channel_port: int = 5600,
) -> Engine:
    """An engine with block size 4 and fixed 10 ms steps, so timings are computable by hand."""
    config = EngineConfig(
        num_gpu_blocks=num_gpu_blocks,
        max_model_len=4096,
        step=TEN_MS_STEPS,
        batching=BatchingConfig(
            block_size=BLOCK_SIZE,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            long_prefill_token_threshold=long_prefill_token_threshold,
        ),
        enable_prefix_caching=enable_prefix_caching,
        kv_load_failure_policy=kv_load_failure_policy,
    )
    identity = ProducerIdentity(
        engine_id=engine_id, side_channel_host="127.0.0.7", side_channel_port=side_channel_port
    )
    return Engine(config, identity)


def make_request(
    request_id: str,
    prompt: list[int],
    *,
    max_tokens: int = 4,
    arrival_time: float = 0.0,
    min_tokens: int = 0,
    eos_after: int | None = None,
    kv_transfer_params: dict[str, Any] | None = None,
) -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        prompt_token_ids=list(prompt),
        max_tokens=max_tokens,
        arrival_time=arrival_time,
        min_tokens=min_tokens,
        eos_after=eos_after,
        kv_transfer_params=kv_transfer_params,
    )


def prompt_of(length: int, start: int = 100) -> list[int]:
    return list(range(start, start + length))


@dataclass
class Run:
    """Everything the engine produced while running until it had nothing to compute."""

    tokens: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    finished: dict[str, RequestOutput] = field(default_factory=dict)
    finish_order: list[str] = field(default_factory=list)
    end: float = 0.0
    steps: int = 0

    def reason(self, request_id: str) -> FinishReason | None:
        return self.finished[request_id].finish_reason


def run_until_idle(engine: Engine, now: float = 0.0, max_steps: int = 1000) -> Run:
    """Step back to back (each step starts when the previous one ended) until idle."""
    run = Run(end=now)
    while engine.has_schedulable_work:
        assert run.steps < max_steps, "engine did not go idle"
        result = engine.step(run.end)
        run.steps += 1
        run.end = result.end
        for output in result.outputs:
            run.tokens[output.request_id].extend(output.new_token_ids)
            if output.finished:
                run.finished[output.request_id] = output
                run.finish_order.append(output.request_id)
    return run
