"""OpenAI completions and chat on top of the engine runner, with vLLM's shapes and checks."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from simulator.config import SimPodConfig
from simulator.errors import OpenAIError, error_body
from simulator.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from simulator.request import EngineRequest, FinishReason, RequestOutput
from simulator.runner import EngineRunner
from simulator.tokenizer import Tokenizer, render_chat

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GenerationLimits:
    """What one prompt may generate, resolved from the request and the context length."""

    max_tokens: int
    min_tokens: int
    eos_after: int | None


@dataclass(slots=True)
class ChoiceResult:
    """Everything generated for one prompt of a request."""

    index: int
    num_prompt_tokens: int
    token_ids: list[int]
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    kv_transfer_params: dict[str, Any] | None = None


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event as vLLM writes it."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


class OpenAIServing:
    """Turns OpenAI requests into engine requests and engine outputs into OpenAI responses."""

    def __init__(self, config: SimPodConfig, runner: EngineRunner, tokenizer: Tokenizer) -> None:
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = runner.engine.config.max_model_len

    # -- checks ----------------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.model_name:
            raise OpenAIError(404, f"The model `{model}` does not exist.", param="model")

    def completion_prompts(self, request: CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt of a completions request."""
        prompt = request.prompt
        if prompt is None or prompt == "" or prompt == []:
            raise OpenAIError(400, "Prompt cannot be empty.", param="prompt")
        if isinstance(prompt, str):
            prompts: list[list[int]] = [self.tokenizer.encode(prompt)]
        elif all(isinstance(p, int) for p in prompt):
            prompts = [[int(t) for t in prompt]]  # type: ignore[arg-type]
        elif all(isinstance(p, str) for p in prompt):
            prompts = [self.tokenizer.encode(str(p)) for p in prompt]
        else:
            prompts = [[int(t) for t in p] for p in prompt]  # type: ignore[union-attr]
        if any(not ids for ids in prompts):
            raise OpenAIError(400, "Prompt cannot be empty.", param="prompt")
        return prompts

    def chat_prompt(self, request: ChatCompletionRequest) -> list[int]:
        if not request.messages:
            raise OpenAIError(400, "messages must contain at least one message.", param="messages")
        text = render_chat([m.model_dump() for m in request.messages])
        return self.tokenizer.encode(text)

    def limits(
        self, request: SamplingFields, prompt_len: int, requested_max: int | None
    ) -> GenerationLimits:
        """vLLM's length checks: the prompt and the output must fit max_model_len."""
        if request.n != 1:
            raise OpenAIError(400, "n must be 1 on this server.", param="n")
        if requested_max is not None and requested_max < 1:
            raise OpenAIError(
                400, f"max_tokens must be at least 1, got {requested_max}.", param="max_tokens"
            )
        if request.min_tokens < 0:
            raise OpenAIError(
                400, f"min_tokens must be greater than or equal to 0, got {request.min_tokens}.",
                param="min_tokens",
            )  # fmt: skip
        if prompt_len >= self.max_model_len:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, your request has {prompt_len} input tokens. "
                "Please reduce the length of the input messages.",
                param="input_tokens",
            )
        max_tokens = self.max_model_len - prompt_len if requested_max is None else requested_max
        if prompt_len + max_tokens > self.max_model_len:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, you requested {prompt_len + max_tokens} tokens ({prompt_len} in the "
                f"messages, {max_tokens} in the completion). Please reduce the length of the "
                "messages or completion.",
                param="input_tokens",
            )
        if request.min_tokens > max_tokens:
            raise OpenAIError(
                400,
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
                f"got {request.min_tokens}.",
                param="min_tokens",
            )
        eos_after = None if request.ignore_eos else self.config.natural_output_len
        return GenerationLimits(max_tokens, request.min_tokens, eos_after)

    # -- generation ------------------------------------------------------------------------

    async def generate(
        self,
        engine_request_id: str,
        prompt: list[int],
        limits: GenerationLimits,
        kv_transfer_params: dict[str, Any] | None,
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of one engine request; aborts it if the consumer stops listening."""
        if not self.runner.alive:
            raise OpenAIError(503, f"The engine is not available: {self.runner.dead_reason}")
        stream = self.runner.submit(
            EngineRequest(
                request_id=engine_request_id,
                prompt_token_ids=prompt,
                max_tokens=limits.max_tokens,
                min_tokens=limits.min_tokens,
                eos_after=limits.eos_after,
                arrival_time=0.0,
                kv_transfer_params=kv_transfer_params,
            )
        )
        finished = False
        try:
            while not finished:
                output = await stream.get()
                finished = output.finished
                yield output
        finally:
            if not finished:
                self.runner.abort(engine_request_id)

    async def collect(
        self,
        engine_request_id: str,
        index: int,
        prompt: list[int],
        limits: GenerationLimits,
        params: dict[str, Any] | None,
    ) -> ChoiceResult:
        result = ChoiceResult(index, len(prompt), [])
        async for output in self.generate(engine_request_id, prompt, limits, params):
            self._absorb(result, output)
        return result

    def _absorb(self, result: ChoiceResult, output: RequestOutput) -> None:
        result.token_ids.extend(output.new_token_ids)
        if output.finished:
            if output.finish_reason is FinishReason.ERROR:
                raise OpenAIError(500, output.error or "The engine failed to serve the request.")
            result.finish_reason = str(output.finish_reason)
            result.num_cached_tokens = output.num_cached_tokens
            result.kv_transfer_params = output.kv_transfer_params

    def usage(self, results: list[ChoiceResult]) -> dict[str, Any]:
        prompt_tokens = sum(r.num_prompt_tokens for r in results)
        completion_tokens = sum(len(r.token_ids) for r in results)
        details = None
        if self.config.enable_prompt_tokens_details:
            details = {"cached_tokens": sum(r.num_cached_tokens for r in results)}
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": details,
        }

    # -- completions -----------------------------------------------------------------------

    async def completion(self, request: CompletionRequest, base_id: str) -> dict[str, Any]:
        prompts, limits = self._prepare_completion(request)
        response_id = f"cmpl-{base_id}"
        results = await asyncio.gather(
            *(
                self.collect(
                    engine_request_id(response_id, i), i, p, lim, request.kv_transfer_params
                )
                for i, (p, lim) in enumerate(zip(prompts, limits, strict=True))
            )
        )
        return {
            "id": response_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.config.model_name,
            "choices": [
                {
                    "index": r.index,
                    "text": self.tokenizer.decode(r.token_ids),
                    "logprobs": None,
                    "finish_reason": r.finish_reason,
                    "stop_reason": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "token_ids": None,
                }
                for r in results
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage(list(results)),
            "kv_transfer_params": results[0].kv_transfer_params,
        }

    def _prepare_completion(
        self, request: CompletionRequest
    ) -> tuple[list[list[int]], list[GenerationLimits]]:
        self.check_model(request.model)
        prompts = self.completion_prompts(request)
        limits = [self.limits(request, len(p), request.max_tokens) for p in prompts]
        return prompts, limits

    def completion_stream(self, request: CompletionRequest, base_id: str) -> AsyncIterator[str]:
        """Validate now (errors get their status), then stream SSE events."""
        prompts, limits = self._prepare_completion(request)
        if len(prompts) != 1:
            raise OpenAIError(
                400, "Streaming supports one prompt per request here.", param="prompt"
            )
        response_id = f"cmpl-{base_id}"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "text_completion",
                "created": created,
                "model": self.config.model_name,
                "choices": choices,
                **extra,
            }

        def token_choice(text: str, finish_reason: str | None) -> dict[str, Any]:
            return {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }

        return self._stream_events(
            request, engine_request_id(response_id, 0), prompts[0], limits[0], chunk, token_choice
        )

    # -- chat ------------------------------------------------------------------------------

    def _prepare_chat(self, request: ChatCompletionRequest) -> tuple[list[int], GenerationLimits]:
        self.check_model(request.model)
        prompt = self.chat_prompt(request)
        requested = request.max_completion_tokens or request.max_tokens
        return prompt, self.limits(request, len(prompt), requested)

    async def chat(self, request: ChatCompletionRequest, base_id: str) -> dict[str, Any]:
        prompt, limits = self._prepare_chat(request)
        response_id = f"chatcmpl-{base_id}"
        result = await self.collect(
            engine_request_id(response_id), 0, prompt, limits, request.kv_transfer_params
        )
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self.tokenizer.decode(result.token_ids),
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage([result]),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "kv_transfer_params": result.kv_transfer_params,
        }

    def chat_stream(self, request: ChatCompletionRequest, base_id: str) -> AsyncIterator[str]:
        """Validate now (errors get their status), then stream SSE events."""
        prompt, limits = self._prepare_chat(request)
        response_id = f"chatcmpl-{base_id}"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.config.model_name,
                "choices": choices,
                **extra,
            }

        def token_choice(text: str, finish_reason: str | None) -> dict[str, Any]:
            return {
                "index": 0,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }

        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}  # fmt: skip
        return self._stream_events(
            request,
            engine_request_id(response_id),
            prompt,
            limits,
            chunk,
            token_choice,
            preamble=chunk([first]),
        )

    # -- streaming -------------------------------------------------------------------------

    async def _stream_events(
        self,
        request: SamplingFields,
        engine_id: str,
        prompt: list[int],
        limits: GenerationLimits,
        chunk: Callable[..., dict[str, Any]],
        token_choice: Callable[[str, str | None], dict[str, Any]],
        preamble: dict[str, Any] | None = None,
    ) -> AsyncIterator[str]:
        """SSE events for one streamed generation, ending with usage (if asked) and [DONE]."""
        if preamble is not None:
            yield sse(preamble)
        options = request.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = bool(options and options.include_usage and options.continuous_usage_stats)
        result = ChoiceResult(0, len(prompt), [])
        try:
            async for output in self.generate(
                engine_id, prompt, limits, request.kv_transfer_params
            ):
                self._absorb(result, output)
                if not output.new_token_ids and not output.finished:
                    continue
                text = self.tokenizer.decode(output.new_token_ids)
                extra: dict[str, Any] = {}
                if continuous:
                    extra["usage"] = self.usage([result])
                if output.finished and result.kv_transfer_params is not None:
                    extra["kv_transfer_params"] = result.kv_transfer_params
                yield sse(chunk([token_choice(text, result.finish_reason)], **extra))
        except OpenAIError as exc:
            # vLLM reports a failure after the stream started as an error event, status 200.
            yield sse(error_body(exc.status, exc.message, param=exc.param))
            yield sse("[DONE]")
            return
        if include_usage:
            yield sse(chunk([], usage=self.usage([result])))
        yield sse("[DONE]")


def engine_request_id(response_id: str, prompt_index: int | None = None) -> str:
    """vLLM's internal id: the response id, the prompt index, and a random 8-hex suffix."""
    base = response_id if prompt_index is None else f"{response_id}-{prompt_index}"
    return f"{base}-{secrets.token_hex(4)}"
