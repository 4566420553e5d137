"""vLLM's request checks, with its status codes and messages, for the simulated pod.

Messages follow vLLM 0.33 (vllm-project/vllm: vllm/renderers/params.py,
vllm/sampling_params.py, vllm/entrypoints/openai/*/protocol.py); each bad parameter is a 400
that names it, worded as vLLM's VLLMValidationError prints itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import invalid_parameter
from simulator.protocol import CompletionRequest, SamplingFields
from simulator.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class GenerationLimits:
    """What one prompt may generate, resolved from the request and the context length."""

    max_tokens: int
    min_tokens: int
    eos_after: int | None


def check_sampling(request: SamplingFields) -> None:
    """Checks vLLM makes on every completions or chat request, besides lengths."""
    if request.stream_options is not None and not request.stream:
        raise invalid_parameter(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )
    if request.n != 1:
        raise invalid_parameter("n must be 1 on a simulated pod.", "n", request.n)


def completion_prompts(
    request: CompletionRequest, tokenizer: Tokenizer
) -> list[tuple[list[int], bool]]:
    """(token ids, came from text) for each prompt of a completions request."""
    prompt = request.prompt
    empty = invalid_parameter(
        "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
    )
    if prompt is None or prompt == "" or prompt == []:
        raise empty
    if isinstance(prompt, str):
        prompts = [(tokenizer.encode(prompt), True)]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [([int(t) for t in prompt], False)]  # type: ignore[arg-type]
    elif all(isinstance(p, str) for p in prompt):
        prompts = [(tokenizer.encode(str(p)), True) for p in prompt]
    else:
        prompts = [([int(t) for t in p], False) for p in prompt]  # type: ignore[union-attr]
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
    if max_tokens < 1:
        raise invalid_parameter(
            f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens
        )
    if request.min_tokens < 0:
        raise invalid_parameter(
            f"min_tokens must be greater than or equal to 0, got {request.min_tokens}.",
            "min_tokens",
            request.min_tokens,
        )
    if request.min_tokens > max_tokens:
        raise invalid_parameter(
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
            f"got {request.min_tokens}.",
            "min_tokens",
            request.min_tokens,
        )
    eos_after = None if request.ignore_eos else natural_output_len
    return GenerationLimits(max_tokens, request.min_tokens, eos_after)
