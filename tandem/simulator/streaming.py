"""Server-sent events of completions and chat, with vLLM's chunks.

Chunks are vLLM's stream models dumped with `exclude_unset`: only the fields vLLM sets on
each kind of chunk, in its models' field order; the final usage chunk is dumped without nulls
(vllm-project/vllm: vllm/entrypoints/openai/completion/serving.py and
chat_completion/serving.py, the `*_stream_generator` methods). Usage comes as a last chunk
only with `stream_options.include_usage`, and on every chunk as well with
`continuous_usage_stats`; the system fingerprint rides on the last chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from tandem.errors import OpenAIError, error_body
from tandem.simulator.protocol import CompletionRequest, SamplingFields
from tandem.simulator.request import RequestOutput
from tandem.simulator.serving import Generation, OpenAIServing, PreparedRequest


def sse(payload: dict[str, Any] | str, *, compact: bool = True) -> str:
    """One server-sent event as vLLM writes it."""
    if isinstance(payload, str):
        return f"data: {payload}\n\n"
    separators = (",", ":") if compact else (", ", ": ")
    return f"data: {json.dumps(payload, separators=separators)}\n\n"


def _usage_flags(request: SamplingFields) -> tuple[bool, bool]:
    """(include_usage, continuous) as vLLM's should_include_usage reads stream_options."""
    options = request.stream_options
    if options is None:
        return False, False
    include = bool(options.include_usage)
    return include, include and bool(options.continuous_usage_stats)


async def merged_outputs(
    serving: OpenAIServing, prepared: PreparedRequest
) -> AsyncIterator[tuple[Generation, RequestOutput]]:
    """Every generation's outputs as they come (vLLM's merge_async_iterators); leaving early
    aborts whatever is still running."""
    queue: asyncio.Queue[tuple[Generation, RequestOutput] | BaseException | None] = asyncio.Queue()

    async def pump(generation: Generation) -> None:
        try:
            async for output in serving.outputs(generation, prepared.request):
                queue.put_nowait((generation, output))
        except Exception as exc:  # re-raised by the consumer
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.ensure_future(pump(g)) for g in prepared.generations]
    running = len(tasks)
    try:
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _header(serving: OpenAIServing, prepared: PreparedRequest, kind: str) -> dict[str, Any]:
    return {
        "id": prepared.response_id,
        "object": kind,
        "created": int(time.time()),
        "model": serving.config.model_name,
    }


def _chunk_usage(prompt_tokens: int, completion_tokens: int, *, chat: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if chat:  # chat passes completion_tokens_details explicitly, so it is dumped
        usage["completion_tokens_details"] = None
    return usage


def _final_usage(
    serving: OpenAIServing,
    prepared: PreparedRequest,
    cached_tokens: int,
    created_cache_tokens: int | None = None,
) -> dict[str, Any]:
    usage = {
        key: value
        for key, value in serving.usage(prepared.generations, cached_tokens).items()
        if value is not None
    }
    details = serving.prompt_details(
        cached_tokens, drop_nulls=True, created_cache_tokens=created_cache_tokens
    )
    if details is not None:
        usage["prompt_tokens_details"] = details
    return usage


async def completion_stream(
    serving: OpenAIServing, prepared: PreparedRequest
) -> AsyncIterator[str]:
    request = prepared.request
    assert isinstance(request, CompletionRequest)
    header = _header(serving, prepared, "text_completion")
    include_usage, continuous = _usage_flags(request)
    echoed: set[int] = set()
    first: Generation | None = None
    try:
        async for generation, output in merged_outputs(serving, prepared):
            first = first or generation
            previous = len(generation.token_ids)
            generation.absorb(output, serving.runner.alive)
            new_ids = list(output.new_token_ids)
            text = serving.tokenizer.decode(new_ids)
            prompt_ids: list[int] | None = None
            if request.echo and generation.index not in echoed:
                echo_text = "" if request.return_token_ids else generation.prompt_text
                text = echo_text if request.echo_only else echo_text + text
                prompt_ids = list(generation.prompt)
                echoed.add(generation.index)
            else:
                if request.return_token_ids and generation.index not in echoed:
                    prompt_ids = list(generation.prompt)
                    echoed.add(generation.index)
                if not text and not new_ids and not previous:
                    continue  # nothing generated yet: vLLM sends no empty chunk
            chunk: dict[str, Any] = {
                **header,
                "choices": [
                    {
                        "index": generation.index,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": generation.finish_reason,
                        "stop_reason": None,
                        "prompt_token_ids": prompt_ids if request.return_token_ids else None,
                        "token_ids": new_ids if request.return_token_ids else None,
                    }
                ],
            }
            if continuous:
                chunk["usage"] = _chunk_usage(
                    len(generation.prompt), len(generation.token_ids), chat=False
                )
            if not include_usage and generation.finish_reason is not None:
                chunk["system_fingerprint"] = serving.system_fingerprint
            yield sse(chunk)
    except OpenAIError as exc:
        # After the headers went out, vLLM reports failure as an error event (status 200);
        # the completions route writes it with json.dumps' default spacing.
        yield sse(error_body(exc.status, exc.message, param=exc.param), compact=False)
        yield sse("[DONE]")
        return
    if include_usage:
        # The cached tokens of the prompt whose output came first (vLLM's first_iteration).
        cached = first.num_cached_tokens if first is not None else 0
        yield sse(
            {
                **header,
                "choices": [],
                "usage": _final_usage(serving, prepared, cached),
                "system_fingerprint": serving.system_fingerprint,
            }
        )
    yield sse("[DONE]")


async def chat_stream(serving: OpenAIServing, prepared: PreparedRequest) -> AsyncIterator[str]:
    request = prepared.request
    header = _header(serving, prepared, "chat.completion.chunk")
    include_usage, continuous = _usage_flags(request)
    num_prompt_tokens = len(prepared.generations[0].prompt)
    started = False
    try:
        async for generation, output in merged_outputs(serving, prepared):
            if not started:
                # vLLM sends the role chunks once the first engine output is in.
                started = True
                for g in prepared.generations:
                    role_chunk: dict[str, Any] = {
                        **header,
                        "choices": [
                            {
                                "index": g.index,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                    if continuous:
                        role_chunk["usage"] = _chunk_usage(num_prompt_tokens, 0, chat=True)
                    role_chunk["prompt_token_ids"] = (
                        list(g.prompt) if request.return_token_ids else None
                    )
                    role_chunk["prompt_text"] = None
                    yield sse(role_chunk)
            previous = len(generation.token_ids)
            generation.absorb(output, serving.runner.alive)
            new_ids = list(output.new_token_ids)
            text = serving.tokenizer.decode(new_ids)
            if not text and not new_ids and not previous:
                continue
            choice: dict[str, Any] = {
                "index": generation.index,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": generation.finish_reason,
            }
            if generation.finish_reason is not None:
                choice["stop_reason"] = None
            choice["token_ids"] = new_ids if request.return_token_ids else None
            chunk: dict[str, Any] = {**header, "choices": [choice]}
            if continuous:
                chunk["usage"] = _chunk_usage(
                    num_prompt_tokens, len(generation.token_ids), chat=True
                )
            if not include_usage and generation.finish_reason is not None:
                chunk["system_fingerprint"] = serving.system_fingerprint
            yield sse(chunk)
    except OpenAIError as exc:
        yield sse(error_body(exc.status, exc.message, param=exc.param))
        yield sse("[DONE]")
        return
    if include_usage:
        first_generation = prepared.generations[0]
        cached = first_generation.num_cached_tokens
        created = serving.created_cache_tokens(first_generation)
        yield sse(
            {
                **header,
                "choices": [],
                "usage": _final_usage(serving, prepared, cached, created),
                "system_fingerprint": serving.system_fingerprint,
            }
        )
    yield sse("[DONE]")
