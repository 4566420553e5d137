"""OpenAI request bodies as vLLM accepts them (vllm-project/vllm: vllm/entrypoints/openai/).

Unknown fields are accepted and ignored, as vLLM does (it logs them). Sampling parameters are
checked as vLLM checks them, though the simulated model's output does not depend on them.
The checks vLLM makes while it parses the body (its `mode="before"` model validators) are made
here too, so they answer before anything else is looked at, with vLLM's messages.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from tandem.simulator.errors import invalid_parameter


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIRequest):
    # Both off unless asked for (vllm-project/vllm: vllm/entrypoints/generate/base/protocol.py).
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


def _check_stream_options(data: dict[str, Any]) -> None:
    # An empty `stream_options` object is falsy, so vLLM lets it through without `stream`.
    if data.get("stream_options") and not data.get("stream"):
        raise invalid_parameter(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )


def _check_integer_logprobs(data: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value = data.get(name)
        if value is not None and not isinstance(value, (int, float)):
            raise invalid_parameter(f"`{name}` must be an integer.", name, value)
    prompt_logprobs = data.get("prompt_logprobs")
    if prompt_logprobs is not None:
        if data.get("stream") and (prompt_logprobs > 0 or prompt_logprobs == -1):
            raise invalid_parameter(
                "`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs"
            )
        if prompt_logprobs < 0 and prompt_logprobs != -1:
            raise invalid_parameter(
                "`prompt_logprobs` must be a positive value or -1.",
                "prompt_logprobs",
                prompt_logprobs,
            )


class SamplingFields(OpenAIRequest):
    """Fields shared by completions and chat that shape generation."""

    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop: str | list[str] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    cache_salt: str | None = None
    request_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    prompt_logprobs: int | None = None
    return_token_ids: bool | None = None

    @property
    def num_choices(self) -> int:
        raise NotImplementedError

    @property
    def sample_logprobs(self) -> int | None:
        """Log-probabilities asked for per sampled token (vLLM's SamplingParams.logprobs)."""
        raise NotImplementedError


NonNegativeInt = Annotated[int, Field(ge=0)]


class CompletionRequest(SamplingFields):
    # The union in vLLM's order, so schema errors list the branches as vLLM does
    # (vllm-project/vllm: vllm/entrypoints/openai/completion/protocol.py).
    prompt: list[NonNegativeInt] | list[list[NonNegativeInt]] | str | list[str] | None = None
    max_tokens: int | None = 16
    echo: bool | None = False
    n: int = 1
    logprobs: int | None = None

    @property
    def num_choices(self) -> int:
        return self.n

    @property
    def echo_only(self) -> bool:
        """Echo without generation: vLLM samples one token and returns only the prompt
        (vllm-project/vllm: CompletionRequest.to_sampling_params)."""
        return bool(self.echo) and self.max_tokens == 0

    @property
    def sample_logprobs(self) -> int | None:
        return self.logprobs

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _check_integer_logprobs(data, ("prompt_logprobs", "logprobs"))
        logprobs = data.get("logprobs")
        if logprobs is not None and logprobs < 0 and logprobs != -1:
            raise invalid_parameter(
                "`logprobs` must be a positive value or -1.", "logprobs", logprobs
            )
        _check_stream_options(data)
        prompt = data.get("prompt")
        if (prompt is None or prompt == "") and data.get("prompt_embeds") in (None, []):
            raise invalid_parameter(
                "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
            )
        if data.get("max_tokens") is None:  # an explicit null means the default
            data = {**data, "max_tokens": 16}
        return data


class ChatMessage(OpenAIRequest):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    logprobs: bool | None = False
    top_logprobs: Annotated[int, BeforeValidator(lambda v: 0 if v is None else v)] = 0

    @property
    def num_choices(self) -> int:
        return 1 if self.n is None else self.n

    @property
    def sample_logprobs(self) -> int | None:
        # vllm-project/vllm: vllm/entrypoints/openai/chat_completion/protocol.py,
        # to_sampling_params.
        return self.top_logprobs if self.logprobs else None

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _check_integer_logprobs(data, ("prompt_logprobs", "top_logprobs"))
        top_logprobs = data.get("top_logprobs")
        if top_logprobs is not None:
            if top_logprobs < 0 and top_logprobs != -1:
                raise invalid_parameter(
                    "`top_logprobs` must be a positive value or -1.", "top_logprobs", top_logprobs
                )
            if (top_logprobs == -1 or top_logprobs > 0) and not data.get("logprobs"):
                raise invalid_parameter(
                    "when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs"
                )
        _check_stream_options(data)
        return data


class TokenizeRequest(OpenAIRequest):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class DetokenizeRequest(OpenAIRequest):
    model: str | None = None
    tokens: list[int]
