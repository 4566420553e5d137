"""OpenAI completions and chat on top of the engine runner, with vLLM 0.33's shapes and checks.

Response fields, their order and which are null follow vLLM's pydantic models
(vllm-project/vllm: vllm/entrypoints/openai/completion/protocol.py, chat_completion/protocol.py);
checks and their messages follow vllm/renderers/params.py and vllm/sampling_params.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from simulator.config import VLLM_VERSION, SimPodConfig
from simulator.errors import OpenAIError, error_body, invalid_parameter
from simulator.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from simulator.request import EngineRequest, FinishReason, RequestOutput
from simulator.runner import EngineRunner
from simulator.tokenizer import Tokenizer, render_chat
from simulator.validation import (
    GenerationLimits,
    check_sampling,
    completion_prompts,
    generation_limits,
)

GENERATION_ERROR = "Internal server error"
"""What vLLM tells a client whose request ended with finish reason "error"."""


@dataclass(slots=True)
class Generation:
    """One prompt of a request, validated and ready to submit, and what it produced."""

    engine_request_id: str
    prompt: list[int]
    limits: GenerationLimits
    kv_transfer_params: dict[str, Any] | None
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    kv_transfer_params_out: dict[str, Any] | None = None

    def absorb(self, output: RequestOutput) -> None:
        """Add one engine output; raises the client-facing error if the request failed."""
        self.token_ids.extend(output.new_token_ids)
        if not output.finished:
            return
        if output.finish_reason is FinishReason.ERROR:
            raise OpenAIError(500, GENERATION_ERROR)
        self.finish_reason = str(output.finish_reason)
        self.num_cached_tokens = output.num_cached_tokens
        self.kv_transfer_params_out = output.kv_transfer_params


def sse(payload: dict[str, Any] | str, *, compact: bool = True) -> str:
    """One server-sent event as vLLM writes it."""
    if isinstance(payload, str):
        return f"data: {payload}\n\n"
    separators = (",", ":") if compact else (", ", ": ")
    return f"data: {json.dumps(payload, separators=separators)}\n\n"


def engine_request_id(response_id: str, prompt_index: int | None = None) -> str:
    """vLLM's internal id: the response id, the prompt index, and a random 8-hex suffix."""
    base = response_id if prompt_index is None else f"{response_id}-{prompt_index}"
    return f"{base}-{secrets.token_hex(4)}"


class OpenAIServing:
    """Turns OpenAI requests into engine requests and engine outputs into OpenAI responses."""

    def __init__(self, config: SimPodConfig, runner: EngineRunner, tokenizer: Tokenizer) -> None:
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = runner.engine.config.max_model_len
        tp = config.engine_profile.tensor_parallel_size
        digest = hashlib.sha256(f"{config.model_name}:{config.profile}".encode()).hexdigest()
        self.system_fingerprint = f"vllm-{VLLM_VERSION}{f'-tp{tp}' if tp > 1 else ''}-{digest[:8]}"

    # -- checks ----------------------------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model and model != self.config.model_name:
            raise OpenAIError(
                404,
                f"The model `{model}` does not exist. Valid aliases: {self.config.model_name}.",
                param="model",
            )

    def _limits(
        self,
        request: SamplingFields,
        prompt_len: int,
        from_text: bool,
        requested: int | None,
        parameter: str = "max_tokens",
    ) -> GenerationLimits:
        return generation_limits(
            request, prompt_len, from_text, requested,
            max_model_len=self.max_model_len,
            natural_output_len=self.config.natural_output_len,
            parameter=parameter,
        )  # fmt: skip

    def prepare_completion(self, request: CompletionRequest, base_id: str) -> list[Generation]:
        """Validate a completions request; raises OpenAIError before anything is queued."""
        self.check_model(request.model)
        check_sampling(request)
        response_id = f"cmpl-{base_id}"
        generations = []
        for index, (prompt, from_text) in enumerate(completion_prompts(request, self.tokenizer)):
            limits = self._limits(request, len(prompt), from_text, request.max_tokens)
            generations.append(
                Generation(
                    engine_request_id(response_id, index),
                    prompt,
                    limits,
                    request.kv_transfer_params,
                )
            )
        if request.stream and len(generations) != 1:
            raise invalid_parameter("Stream one prompt per request.", "prompt")
        return generations

    def prepare_chat(self, request: ChatCompletionRequest, base_id: str) -> Generation:
        """Validate a chat request; raises OpenAIError before anything is queued."""
        self.check_model(request.model)
        check_sampling(request)
        if not request.messages:
            raise invalid_parameter("messages must not be empty.", "messages")
        prompt = self.tokenizer.encode(render_chat([m.model_dump() for m in request.messages]))
        requested: int | None = request.max_tokens
        parameter = "max_tokens"
        if request.max_completion_tokens is not None:
            requested, parameter = request.max_completion_tokens, "max_completion_tokens"
        limits = self._limits(request, len(prompt), True, requested, parameter)
        return Generation(
            engine_request_id(f"chatcmpl-{base_id}"), prompt, limits, request.kv_transfer_params
        )

    # -- generation ------------------------------------------------------------------------

    async def outputs(self, generation: Generation) -> AsyncIterator[RequestOutput]:
        """Engine outputs of one generation; aborts it if the consumer stops listening."""
        if not self.runner.alive:
            raise OpenAIError(503, f"The engine is not available: {self.runner.dead_reason}")
        stream = self.runner.submit(
            EngineRequest(
                request_id=generation.engine_request_id,
                prompt_token_ids=generation.prompt,
                max_tokens=generation.limits.max_tokens,
                min_tokens=generation.limits.min_tokens,
                eos_after=generation.limits.eos_after,
                arrival_time=0.0,
                kv_transfer_params=generation.kv_transfer_params,
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
                self.runner.abort(generation.engine_request_id)

    async def run(self, generation: Generation) -> Generation:
        async for output in self.outputs(generation):
            generation.absorb(output)
        return generation

    def usage(self, generations: list[Generation], *, chat: bool) -> dict[str, Any]:
        prompt_tokens = sum(len(g.prompt) for g in generations)
        completion_tokens = sum(len(g.token_ids) for g in generations)
        details: dict[str, int | None] | None = None
        if self.config.enable_prompt_tokens_details:
            details = {"cached_tokens": sum(g.num_cached_tokens for g in generations)}
            if chat:
                details |= {"created_cache_tokens": None, "multimodal_tokens": None}
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": details,
            "completion_tokens_details": None,
        }

    # -- non-streaming ---------------------------------------------------------------------

    async def completion(self, generations: list[Generation], base_id: str) -> dict[str, Any]:
        done = await asyncio.gather(*(self.run(g) for g in generations))
        return {
            "id": f"cmpl-{base_id}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.config.model_name,
            "choices": [
                {
                    "index": index,
                    "text": self.tokenizer.decode(g.token_ids),
                    "logprobs": None,
                    "finish_reason": g.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                    "weight_versions": None,
                }
                for index, g in enumerate(done)
            ],
            "service_tier": None,
            "system_fingerprint": self.system_fingerprint,
            "usage": self.usage(list(done), chat=False),
            "kv_transfer_params": done[0].kv_transfer_params_out,
            "ec_transfer_params": None,
            "metrics": None,
        }

    async def chat(self, generation: Generation, base_id: str) -> dict[str, Any]:
        g = await self.run(generation)
        return {
            "id": f"chatcmpl-{base_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self.tokenizer.decode(g.token_ids),
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": g.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                    "weight_versions": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": self.system_fingerprint,
            "usage": self.usage([g], chat=True),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": g.kv_transfer_params_out,
            "ec_transfer_params": None,
            "metrics": None,
        }

    # -- streaming -------------------------------------------------------------------------

    async def completion_stream(
        self, generation: Generation, request: CompletionRequest, base_id: str
    ) -> AsyncIterator[str]:
        header = self._chunk_header(f"cmpl-{base_id}", "text_completion")
        try:
            async for output in self.outputs(generation):
                generation.absorb(output)
                if not output.new_token_ids and not output.finished:
                    continue
                chunk: dict[str, Any] = {
                    **header,
                    "choices": [
                        {
                            "index": 0,
                            "text": self.tokenizer.decode(output.new_token_ids),
                            "logprobs": None,
                            "finish_reason": generation.finish_reason,
                            "stop_reason": None,
                            "prompt_token_ids": None,
                            "token_ids": None,
                            "weight_versions": None,
                        }
                    ],
                }
                self._add_stream_tail(chunk, generation, request, chat=False)
                yield sse(chunk)
        except OpenAIError as exc:
            # After the headers went out, vLLM reports failure as an error event (status 200);
            # the completions route writes it with json.dumps' default spacing.
            yield sse(error_body(exc.status, exc.message, param=exc.param), compact=False)
            yield sse("[DONE]")
            return
        async for event in self._stream_end(header, generation, request, chat=False):
            yield event

    async def chat_stream(
        self, generation: Generation, request: ChatCompletionRequest, base_id: str
    ) -> AsyncIterator[str]:
        header = self._chunk_header(f"chatcmpl-{base_id}", "chat.completion.chunk")
        yield sse(
            {
                **header,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
                "prompt_token_ids": None,
                "prompt_text": None,
            }
        )
        try:
            async for output in self.outputs(generation):
                generation.absorb(output)
                if not output.new_token_ids and not output.finished:
                    continue
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": self.tokenizer.decode(output.new_token_ids)},
                    "logprobs": None,
                    "finish_reason": generation.finish_reason,
                    "token_ids": None,
                }
                if generation.finish_reason is not None:
                    choice |= {"stop_reason": None, "weight_versions": None}
                chunk: dict[str, Any] = {**header, "choices": [choice]}
                self._add_stream_tail(chunk, generation, request, chat=True)
                yield sse(chunk)
        except OpenAIError as exc:
            yield sse(error_body(exc.status, exc.message, param=exc.param))
            yield sse("[DONE]")
            return
        async for event in self._stream_end(header, generation, request, chat=True):
            yield event

    def _chunk_header(self, response_id: str, kind: str) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": kind,
            "created": int(time.time()),
            "model": self.config.model_name,
        }

    def _add_stream_tail(
        self, chunk: dict[str, Any], generation: Generation, request: SamplingFields, *, chat: bool
    ) -> None:
        """Per-chunk usage (continuous stats), fingerprint on the last chunk, KV params."""
        options = request.stream_options
        if options is not None and options.include_usage and options.continuous_usage_stats:
            chunk["usage"] = self.usage([generation], chat=chat)
        wants_usage_chunk = bool(options and options.include_usage)
        if generation.finish_reason is not None and not wants_usage_chunk:
            chunk["system_fingerprint"] = self.system_fingerprint
        chunk["kv_transfer_params"] = generation.kv_transfer_params_out

    async def _stream_end(
        self, header: dict[str, Any], generation: Generation, request: SamplingFields, *, chat: bool
    ) -> AsyncIterator[str]:
        options = request.stream_options
        if options is not None and options.include_usage:
            usage = _without_nulls(self.usage([generation], chat=chat))
            yield sse(
                {
                    **header,
                    "choices": [],
                    "usage": usage,
                    "system_fingerprint": self.system_fingerprint,
                }
            )
        yield sse("[DONE]")


def _without_nulls(value: dict[str, Any]) -> dict[str, Any]:
    """The final usage chunk is dumped with exclude_none."""
    return {
        key: _without_nulls(item) if isinstance(item, dict) else item
        for key, item in value.items()
        if item is not None
    }
