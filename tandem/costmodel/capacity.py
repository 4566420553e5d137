"""What one vLLM pod sustains within an SLO, from the step-time model (`step.py`).

* `prefill_tokens_per_s`: prompt tokens a pod prefills per second when its queue never
  empties. Prompts shorter than a step's token budget (vLLM's `max_num_batched_tokens`)
  share a step; longer ones are chunked over several, each chunk attending to the ones
  before (vLLM's chunked prefill).
* `decode_pods_for_itl`: how many pods keep a decode step (one token per running sequence)
  within an ITL target when the pool's running sequences and their context are spread over
  them: a step costs `t_ovh + max(t_w, c_lin * D) + c_kv * K` for D sequences reading K
  tokens, which falls as the pods grow in number.

The orchestrator's scaling signals (`orchestrator/scaling.py`) size the pools with these, and
the simulated pods time their steps with the same coefficients, so the signal and the
planner's virtual clusters agree.
"""

from __future__ import annotations

import math
from dataclasses import replace

from tandem.costmodel.profiles import StepCoefficients
from tandem.costmodel.step import PrefillChunk, StepShape, step_seconds

DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
"""vLLM's step token budget for an OpenAI server on a large-memory GPU (vllm-project/vllm:
vllm/engine/arg_utils.py, `default_max_num_batched_tokens`, OPENAI_API_SERVER), the
simulated pods' default too."""


def scaled(coefficients: StepCoefficients, time_scale: float) -> StepCoefficients:
    """The coefficients of a pod whose model time runs `time_scale` times slower than wall
    time (a simulated pod started with `--time-scale`)."""
    c = coefficients
    return replace(
        c,
        t_ovh=c.t_ovh * time_scale,
        t_w=c.t_w * time_scale,
        c_lin=c.c_lin * time_scale,
        c_attn=c.c_attn * time_scale,
        c_kv=c.c_kv * time_scale,
    )


def prompt_seconds(
    coefficients: StepCoefficients,
    prompt_tokens: int,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
) -> float:
    """Step time one prompt of `prompt_tokens` costs a pod that is never idle: its share of
    a step packed with as many such prompts as the budget holds, or the sum of its chunks'
    steps when it does not fit in one."""
    if prompt_tokens <= 0:
        return 0.0
    budget = max(1, max_num_batched_tokens)
    if prompt_tokens <= budget:
        per_step = budget // prompt_tokens
        shape = StepShape(prefill_chunks=(PrefillChunk(prompt_tokens, 0),) * per_step)
        return step_seconds(coefficients, shape) / per_step
    total, done = 0.0, 0
    while done < prompt_tokens:
        chunk = min(budget, prompt_tokens - done)
        total += step_seconds(coefficients, StepShape(prefill_chunks=(PrefillChunk(chunk, done),)))
        done += chunk
    return total


def prefill_tokens_per_s(
    coefficients: StepCoefficients,
    prompt_tokens: int,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
) -> float:
    """Prompt tokens per second one pod prefills, for prompts of `prompt_tokens` each."""
    prompt_tokens = max(1, prompt_tokens)
    return prompt_tokens / prompt_seconds(coefficients, prompt_tokens, max_num_batched_tokens)


def decode_pods_for_itl(
    coefficients: StepCoefficients, running: int, context_tokens: int, itl_s: float
) -> float:
    """The (fractional) number of pods over which `running` decoding sequences holding
    `context_tokens` in all step within `itl_s`; infinity when no number of pods can (the
    target is below a step's fixed cost, `t_ovh + t_w`)."""
    if running <= 0:
        return 0.0
    c = coefficients
    if itl_s <= c.t_ovh + c.t_w:
        return math.inf
    # t_ovh + max(t_w, c_lin * D/n) + c_kv * K/n <= itl, for both branches of the max:
    #   n >= c_kv * K / (itl - t_ovh - t_w)   and   n >= (c_lin * D + c_kv * K) / (itl - t_ovh)
    reads = c.c_kv * context_tokens
    return max(reads / (itl_s - c.t_ovh - c.t_w), (c.c_lin * running + reads) / (itl_s - c.t_ovh))
