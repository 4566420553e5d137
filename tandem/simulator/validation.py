"""vLLM's request checks, with its status codes and messages, for the simulated pod.

Messages follow vLLM 0.32 and 0.33 (vllm-project/vllm: vllm/renderers/params.py,
vllm/sampling_params.py, vllm/entrypoints/openai/*/protocol.py); each bad parameter is a 400
that names it, worded as vLLM's VLLMValidationError prints itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tandem.kvcache.tokenizer import Tokenizer
from tandem.simulator.errors import invalid_parameter, unnamed_parameter
from tandem.simulator.protocol import CompletionRequest, SamplingFields


@dataclass(frozen=True, slots=True)
class GenerationLimits:
    """What one prompt may generate, resolved from the request and the context length."""

    max_tokens: int
    min_tokens: int
    eos_after: int | None


MAX_N_SEQUENCES = 16384
"""vLLM's VLLM_MAX_N_SEQUENCES default (vllm-project/vllm: vllm/envs.py)."""

MAX_LOGPROBS = 20
"""vLLM's `--max-logprobs` default (vllm-project/vllm: vllm/config/model.py)."""

_SAMPLING_EPS = 1e-5

# What an unset sampling parameter means (vllm-project/vllm: CompletionRequest's and
# ChatCompletionRequest's _DEFAULT_SAMPLING_PARAMS); the served model's generation config
# may change these in vLLM, but not whether a given value is valid.
_DEFAULTS = {
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
}


def _value(request: SamplingFields, name: str) -> float:
    value = getattr(request, name)
    return float(_DEFAULTS[name] if value is None else value)


def check_sampling_params(request: SamplingFields, max_tokens: int) -> None:
    """vLLM's SamplingParams checks, in its order and with its messages; a check that vLLM
    raises without naming the parameter has no param and no suffix
    (vllm-project/vllm: vllm/sampling_params.py, `_verify_args`)."""
    n = request.num_choices
    if n < 1:
        raise unnamed_parameter(f"n must be at least 1, got {n}.")
    if n > MAX_N_SEQUENCES:
        raise unnamed_parameter(
            f"n must be at most {MAX_N_SEQUENCES}, got {n}. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable."
        )
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2.0 <= _value(request, name) <= 2.0:
            raise unnamed_parameter(f"{name} must be in [-2, 2], got {_value(request, name)}.")
    repetition = _value(request, "repetition_penalty")
    if not math.isfinite(repetition):
        raise unnamed_parameter(f"repetition_penalty must be a finite number, got {repetition}.")
    if repetition <= 0.0:
        raise unnamed_parameter(f"repetition_penalty must be greater than zero, got {repetition}.")
    temperature = _value(request, "temperature")
    if not math.isfinite(temperature):
        raise invalid_parameter(
            f"temperature must be a finite number, got {temperature}.", "temperature", temperature
        )
    if temperature < 0.0:
        raise invalid_parameter(
            f"temperature must be non-negative, got {temperature}.", "temperature", temperature
        )
    if temperature > 2.0:
        raise invalid_parameter(
            f"temperature must be in [0, 2], got {temperature}.", "temperature", temperature
        )
    top_p = _value(request, "top_p")
    if not 0.0 < top_p <= 1.0:
        raise invalid_parameter(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    top_k = request.top_k if request.top_k is not None else 0
    if top_k < -1:
        raise unnamed_parameter(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
    min_p = _value(request, "min_p")
    if not 0.0 <= min_p <= 1.0:
        raise unnamed_parameter(f"min_p must be in [0, 1], got {min_p}.")
    if max_tokens < 1:
        raise invalid_parameter(
            f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens
        )
    if request.min_tokens < 0:
        raise unnamed_parameter(
            f"min_tokens must be greater than or equal to 0, got {request.min_tokens}."
        )
    if request.min_tokens > max_tokens:
        raise unnamed_parameter(
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
            f"got {request.min_tokens}."
        )
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    if any(not stop for stop in stops):
        raise unnamed_parameter("stop cannot contain an empty string.")
    if temperature < _SAMPLING_EPS and n > 1:
        raise unnamed_parameter(f"n must be 1 when using greedy sampling, got {n}.")


def check_logprobs_limit(request: SamplingFields, vocab_size: int) -> None:
    """The engine's check when the request is submitted (vllm-project/vllm:
    vllm/sampling_params.py, `_validate_logprobs`); -1 means the whole vocabulary."""
    logprobs = request.sample_logprobs
    if logprobs and (logprobs == -1 or logprobs > MAX_LOGPROBS):
        shown = vocab_size if logprobs == -1 else logprobs
        raise invalid_parameter(
            f"Requested sample logprobs of {shown}, which is greater than max allowed: "
            f"{MAX_LOGPROBS}",
            "logprobs",
            shown,
        )


def completion_prompts(
    request: CompletionRequest, tokenizer: Tokenizer
) -> list[tuple[list[int], str | None]]:
    """(token ids, the text they came from, or None) for each prompt of a completions
    request."""
    prompt = request.prompt
    empty = invalid_parameter(
        "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
    )
    if prompt is None or prompt == "" or prompt == []:
        raise empty
    prompts: list[tuple[list[int], str | None]]
    if isinstance(prompt, str):
        prompts = [(tokenizer.encode(prompt), prompt)]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [([int(t) for t in prompt], None)]  # type: ignore[arg-type]
    elif all(isinstance(p, str) for p in prompt):
        prompts = [(tokenizer.encode(str(p)), str(p)) for p in prompt]
    else:
        prompts = [([int(t) for t in p], None) for p in prompt]  # type: ignore[union-attr]
    if any(not ids for ids, _ in prompts):
        raise empty
    return prompts


def generation_limits(
    request: SamplingFields,
    prompt_len: int,
    from_text: bool,
    requested: int | None,
    *,
    max_model_len: int,
    natural_output_len: int,
    parameter: str = "max_tokens",
) -> GenerationLimits:
    """vLLM's checks on lengths; max_tokens beyond the context is clamped, not refused."""
    limit = max_model_len
    if prompt_len > limit:
        # vLLM truncates text at max_model_len + 1 before it counts.
        shown = f"at least {limit + 1}" if from_text else str(prompt_len)
        raise invalid_parameter(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"contains {shown} input tokens, which exceeds this limit even without any "
            "output tokens. Please reduce the length of the input prompt.",
            "input_tokens",
            limit + 1 if from_text else prompt_len,
        )
    if requested is not None and requested > limit:
        raise invalid_parameter(
            f"{parameter}={requested} cannot be greater than max_model_len={limit}. "
            "Please request fewer output tokens.",
            parameter,
            requested,
        )
    room = limit - prompt_len
    max_tokens = room if requested is None else min(requested, room)
    eos_after = None if request.ignore_eos else natural_output_len
    return GenerationLimits(max_tokens, request.min_tokens, eos_after)
