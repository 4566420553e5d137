"""OpenAI completions and chat on top of the engine runner, with vLLM's shapes and checks.

Response fields, their order and which are null follow vLLM's pydantic models
(vllm-project/vllm: vllm/entrypoints/openai/completion/protocol.py, chat_completion/protocol.py,
vllm/entrypoints/serve/engine/protocol.py for usage); checks and their messages follow
vllm/renderers/params.py and vllm/sampling_params.py. Streaming lives in
`tandem.simulator.streaming`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tandem.errors import OpenAIError
from tandem.kvcache.tokenizer import Tokenizer, render_chat
from tandem.simulator.config import VLLM_VERSION, SimPodConfig
from tandem.simulator.errors import invalid_parameter
from tandem.simulator.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from tandem.simulator.request import EngineRequest, FinishReason, RequestOutput
from tandem.simulator.runner import EngineRunner
from tandem.simulator.validation import (
    GenerationLimits,
    check_logprobs_limit,
    check_sampling_params,
    completion_prompts,
    generation_limits,
)

GENERATION_ERROR = "Internal server error"
"""What vLLM tells a client whose request ended with finish reason "error"."""

ENGINE_DEAD_ERROR = "EngineCore encountered an issue. See stack trace (above) for the root cause."
"""vLLM's EngineDeadError message (vllm-project/vllm: vllm/v1/engine/exceptions.py)."""


@dataclass(slots=True)
class Generation:
    """One choice of a request (a prompt, sampled once), validated, and what it produced."""

    engine_request_id: str
    prompt: list[int]
    limits: GenerationLimits
    kv_transfer_params: dict[str, Any] | None
    prompt_index: int = 0
    index: int = 0
    """The choice's index in the response: prompt index * n + sample index."""
    sample_index: int = 0
    prompt_text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    kv_transfer_params_out: dict[str, Any] | None = None

    def absorb(self, output: RequestOutput, engine_alive: bool = True) -> None:
        """Add one engine output; raises the client-facing error if the request failed."""
        self.token_ids.extend(output.new_token_ids)
        if not output.finished:
            return
        if output.finish_reason is FinishReason.ERROR:
            raise OpenAIError(500, GENERATION_ERROR if engine_alive else ENGINE_DEAD_ERROR)
        self.finish_reason = str(output.finish_reason)
        self.num_cached_tokens = output.num_cached_tokens
        self.kv_transfer_params_out = output.kv_transfer_params


@dataclass(slots=True)
class PreparedRequest:
    """A validated request: its response id and one generation per choice."""

    response_id: str
    generations: list[Generation]
    request: SamplingFields

    @property
    def num_prompts(self) -> int:
        return 1 + max(g.prompt_index for g in self.generations)


def base_request_id(header: str | None, body_request_id: str | None) -> str:
    """The id under `cmpl-`/`chatcmpl-`: the X-Request-Id header, then the body's request_id,
    then a random id (vllm-project/vllm: vllm/entrypoints/serve/engine/serving.py,
    `_base_request_id`)."""
    if header is not None:
        return header
    if body_request_id is not None:
        return body_request_id
    return random_uuid()


def random_uuid() -> str:
    """vLLM's random id: 16 hex digits of a uuid4 (vllm-project/vllm: vllm/utils, random_uuid)."""
    return f"{uuid.uuid4().int & (2**64 - 1):016x}"


def engine_request_id(base: str) -> str:
    """vLLM's internal id: the per-prompt id and a random 8-hex suffix."""
    return f"{base}-{secrets.token_hex(4)}"


def _choice_ids(prompt_id: str, n: int) -> list[str]:
    # An n > 1 request fans out into child requests `{index}_{parent}` inside vLLM.
    if n == 1:
        return [engine_request_id(prompt_id)]
    return [engine_request_id(f"{i}_{prompt_id}") for i in range(n)]


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

    def _check_engine(self) -> None:
        # vLLM's _preflight: a dead engine fails every new request with its EngineDeadError.
        if not self.runner.alive:
            raise OpenAIError(500, ENGINE_DEAD_ERROR)

    def _limits(
        self,
        request: SamplingFields,
        prompt_len: int,
        from_text: bool,
        requested: int | None,
        parameter: str = "max_tokens",
    ) -> GenerationLimits:
        limits = generation_limits(
            request, prompt_len, from_text, requested,
            max_model_len=self.max_model_len,
            natural_output_len=self.config.natural_output_len,
            parameter=parameter,
        )  # fmt: skip
        check_sampling_params(request, limits.max_tokens)
        return limits

    def prepare_completion(
        self, request: CompletionRequest, request_id_header: str | None
    ) -> PreparedRequest:
        """Validate a completions request; raises OpenAIError before anything is queued."""
        self.check_model(request.model)
        self._check_engine()
        response_id = f"cmpl-{base_request_id(request_id_header, request.request_id)}"
        requested = 1 if request.echo_only else request.max_tokens
        n = request.num_choices
        generations = []
        prompts = completion_prompts(request, self.tokenizer)
        for prompt_index, (prompt, text) in enumerate(prompts):
            # vLLM detokenizes a prompt of token ids to echo it.
            limits = self._limits(request, len(prompt), text is not None, requested)
            prompt_text = text if text is not None else self.tokenizer.decode(prompt)
            for sample, request_id in enumerate(_choice_ids(f"{response_id}-{prompt_index}", n)):
                generations.append(
                    Generation(
                        request_id, prompt, limits, request.kv_transfer_params,
                        prompt_index=prompt_index, index=prompt_index * n + sample,
                        sample_index=sample, prompt_text=prompt_text,
                    )
                )  # fmt: skip
        return PreparedRequest(response_id, generations, request)

    def prepare_chat(
        self, request: ChatCompletionRequest, request_id_header: str | None
    ) -> PreparedRequest:
        """Validate a chat request; raises OpenAIError before anything is queued."""
        self.check_model(request.model)
        self._check_engine()
        if not request.messages:
            raise invalid_parameter("messages must not be empty.", "messages")
        response_id = f"chatcmpl-{base_request_id(request_id_header, request.request_id)}"
        prompt = self.tokenizer.encode(render_chat([m.model_dump() for m in request.messages]))
        requested: int | None = request.max_tokens
        parameter = "max_tokens"
        if request.max_completion_tokens is not None:
            requested, parameter = request.max_completion_tokens, "max_completion_tokens"
        limits = self._limits(request, len(prompt), True, requested, parameter)
        generations = [
            Generation(
                request_id,
                prompt,
                limits,
                request.kv_transfer_params,
                index=index,
                sample_index=index,
            )
            for index, request_id in enumerate(_choice_ids(response_id, request.num_choices))
        ]
        return PreparedRequest(response_id, generations, request)

    # -- generation ------------------------------------------------------------------------

    async def outputs(
        self, generation: Generation, request: SamplingFields
    ) -> AsyncIterator[RequestOutput]:
        """Engine outputs of one generation; aborts it if the consumer stops listening."""
        check_logprobs_limit(request, self.tokenizer.vocab_size)
        if not self.runner.alive:
            raise OpenAIError(500, ENGINE_DEAD_ERROR)
        stream = self.runner.submit(
            EngineRequest(
                request_id=generation.engine_request_id,
                prompt_token_ids=generation.prompt,
                max_tokens=generation.limits.max_tokens,
                min_tokens=generation.limits.min_tokens,
                eos_after=generation.limits.eos_after,
                arrival_time=0.0,
                kv_transfer_params=generation.kv_transfer_params,
                n=request.num_choices,
                sample_index=generation.sample_index,
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

    async def run(self, generation: Generation, request: SamplingFields) -> Generation:
        async for output in self.outputs(generation, request):
            generation.absorb(output, self.runner.alive)
        return generation

    async def run_all(self, prepared: PreparedRequest) -> list[Generation]:
        tasks = [asyncio.ensure_future(self.run(g, prepared.request)) for g in prepared.generations]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    def prompt_details(
        self, cached_tokens: int, *, drop_nulls: bool, created_cache_tokens: int | None = None
    ) -> dict[str, Any] | None:
        """`prompt_tokens_details` with prompt-token details enabled: vLLM's
        PromptTokenUsageInfo, whose unset fields are nulls unless the dump drops them."""
        if not self.config.enable_prompt_tokens_details:
            return None
        details = {
            "cached_tokens": cached_tokens,
            "created_cache_tokens": created_cache_tokens,
            "multimodal_tokens": None,
        }
        if drop_nulls:
            return {key: value for key, value in details.items() if value is not None}
        return details

    def created_cache_tokens(self, generation: Generation) -> int:
        """Prompt tokens this request wrote to the prefix cache, as chat's usage reports them:
        the prompt's full blocks, hashed once it is computed, less what was cached before
        (vLLM 0.32: PrefillStats.finalize with KVCacheManager.estimate_cached_tokens;
        completions pass no such count)."""
        block_size = self.config.block_size
        full_blocks_tokens = len(generation.prompt) // block_size * block_size
        return max(0, full_blocks_tokens - generation.num_cached_tokens)

    def usage(
        self,
        generations: list[Generation],
        cached_tokens: int,
        *,
        created_cache_tokens: int | None = None,
    ) -> dict[str, Any]:
        """The response's usage: prompts counted once each, every choice's output."""
        by_prompt = {g.prompt_index: len(g.prompt) for g in generations}
        prompt_tokens = sum(by_prompt.values())
        completion_tokens = sum(len(g.token_ids) for g in generations)
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": self.prompt_details(
                cached_tokens, drop_nulls=False, created_cache_tokens=created_cache_tokens
            ),
            "completion_tokens_details": None,
        }

    # -- non-streaming ---------------------------------------------------------------------

    async def completion(self, prepared: PreparedRequest) -> dict[str, Any]:
        done = await self.run_all(prepared)
        request = prepared.request
        assert isinstance(request, CompletionRequest)
        choices = []
        for g in done:
            text = "" if request.echo_only else self.tokenizer.decode(g.token_ids)
            if request.echo:
                # With return_token_ids, vLLM echoes the prompt's ids, not its text.
                text = ("" if request.return_token_ids else g.prompt_text) + text
            choices.append(
                {
                    "index": g.index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": g.finish_reason,
                    "stop_reason": None,
                    "token_ids": list(g.token_ids) if request.return_token_ids else None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": list(g.prompt) if request.return_token_ids else None,
                    "routed_experts": None,
                }
            )
        # Cached tokens are the last prompt's (vllm-project/vllm: completion/serving.py,
        # request_output_to_completion_response).
        return {
            "id": prepared.response_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.config.model_name,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": self.system_fingerprint,
            "usage": self.usage(done, done[-1].num_cached_tokens),
            "kv_transfer_params": done[0].kv_transfer_params_out,
            "ec_transfer_params": None,
            "metrics": None,
        }

    async def chat(self, prepared: PreparedRequest) -> dict[str, Any]:
        done = await self.run_all(prepared)
        request = prepared.request
        return {
            "id": prepared.response_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model_name,
            "choices": [
                {
                    "index": g.index,
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
                    "token_ids": list(g.token_ids) if request.return_token_ids else None,
                    "routed_experts": None,
                }
                for g in done
            ],
            "service_tier": None,
            "system_fingerprint": self.system_fingerprint,
            "usage": self.usage(
                done,
                done[0].num_cached_tokens,
                created_cache_tokens=self.created_cache_tokens(done[0]),
            ),
            "prompt_logprobs": None,
            "prompt_token_ids": list(done[0].prompt) if request.return_token_ids else None,
            "prompt_text": None,
            "kv_transfer_params": done[0].kv_transfer_params_out,
            "ec_transfer_params": None,
            "metrics": None,
        }
