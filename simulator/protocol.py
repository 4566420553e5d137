"""OpenAI request bodies as vLLM accepts them (vllm-project/vllm: vllm/entrypoints/openai/).

Unknown fields are accepted and ignored, as vLLM does (it logs them). Sampling parameters the
simulated model cannot honour (temperature, top_p, seed, ...) are accepted for the same reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIRequest):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class SamplingFields(OpenAIRequest):
    """Fields shared by completions and chat that shape generation."""

    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int = 1
    ignore_eos: bool = False
    min_tokens: int = 0
    stop: str | list[str] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    cache_salt: str | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    max_tokens: int | None = 16
    echo: bool | None = False


class ChatMessage(OpenAIRequest):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class TokenizeRequest(OpenAIRequest):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class DetokenizeRequest(OpenAIRequest):
    model: str | None = None
    tokens: list[int]
