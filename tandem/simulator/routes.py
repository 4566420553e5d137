"""The simulated vLLM pod's routes: vLLM's OpenAI API, health, load, tokenizer and metrics,
in vLLM's shapes; what they share is the `PodState` the server's lifespan builds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.background import BackgroundTask

from tandem.errors import CLIENT_CLOSED_REQUEST, OpenAIError
from tandem.kvcache.tokenizer import render_chat
from tandem.simulator.config import VLLM_VERSION, SimPodConfig
from tandem.simulator.errors import require_json
from tandem.simulator.faults import FAULT_ERRORS, FaultInjector
from tandem.simulator.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from tandem.simulator.runner import EngineRunner
from tandem.simulator.serving import OpenAIServing, PreparedRequest, random_uuid
from tandem.simulator.streaming import chat_stream, completion_stream

router = APIRouter()


@dataclass(slots=True)
class PodState:
    """What the routes share; built by the lifespan."""

    config: SimPodConfig
    runner: EngineRunner
    serving: OpenAIServing
    registry: CollectorRegistry
    faults: FaultInjector
    crash: Callable[[], None]
    """Ends the process on an injected crash."""
    server_load: int = 0


def _decrement_load(state: PodState) -> None:
    state.server_load -= 1


def _release_rejected(state: PodState, kv_transfer_params: dict[str, Any] | None) -> None:
    """A remote-prefill request refused before it reached the engine: tell its producer to
    free the blocks it holds (vllm-project/vllm: vllm/entrypoints/generate/base/serving.py,
    `_with_kv_transfer_rejection_cleanup`)."""
    if state.config.kv_role is None or not kv_transfer_params:
        return
    if kv_transfer_params.get("do_remote_prefill"):
        state.runner.release_rejected(kv_transfer_params)


async def _until_disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read; nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    """Run `work`, cancelling it if the client disconnects first (vLLM's with_cancellation)."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_until_disconnected(request))
    try:
        done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
    if work_task in done:
        return work_task.result()
    work_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work_task
    return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; the work is cancelled


def pod(request: Request) -> PodState:
    state: PodState = request.app.state.pod
    return state


async def inference(
    request: Request,
    kv_transfer_params: dict[str, Any] | None,
    prepare: Callable[[PodState], PreparedRequest],
    respond: Callable[[PodState, PreparedRequest], Awaitable[Response]],
) -> Response:
    """Load tracking, faults, the rejection notice to a producer, and client-disconnect
    cancellation, in the order of vLLM's route decorators."""
    state = pod(request)
    decision = state.faults.decide()
    if decision.crash:
        state.crash()
    tracking = state.config.enable_server_load_tracking
    if tracking:
        state.server_load += 1
    try:
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)
        if decision.hang:
            await _until_disconnected(request)
            response: Response = Response(status_code=CLIENT_CLOSED_REQUEST)
        elif decision.error_status is not None:
            kind, message = FAULT_ERRORS[decision.error_status]
            raise OpenAIError(decision.error_status, message, type=kind)
        else:
            try:
                prepared = prepare(state)
            except OpenAIError:
                _release_rejected(state, kv_transfer_params)
                raise
            response = await _cancel_on_disconnect(request, respond(state, prepared))
    except BaseException:
        if tracking:
            state.server_load -= 1
        raise
    if tracking:
        # A stream counts until its body has been sent (vLLM's load_aware_call hangs the
        # decrement on the response's background task).
        if isinstance(response, StreamingResponse):
            response.background = BackgroundTask(_decrement_load, state)
        else:
            state.server_load -= 1
    return response


@router.post("/v1/completions", dependencies=[Depends(require_json)])
async def completions(request: Request, body: CompletionRequest) -> Response:
    def prepare(state: PodState) -> PreparedRequest:
        return state.serving.prepare_completion(body, request.headers.get("x-request-id"))

    async def respond(state: PodState, prepared: PreparedRequest) -> Response:
        if body.stream:
            events = completion_stream(state.serving, prepared)
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(await state.serving.completion(prepared))

    return await inference(request, body.kv_transfer_params, prepare, respond)


@router.post("/v1/chat/completions", dependencies=[Depends(require_json)])
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    def prepare(state: PodState) -> PreparedRequest:
        return state.serving.prepare_chat(body, request.headers.get("x-request-id"))

    async def respond(state: PodState, prepared: PreparedRequest) -> Response:
        if body.stream:
            events = chat_stream(state.serving, prepared)
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(await state.serving.chat(prepared))

    return await inference(request, body.kv_transfer_params, prepare, respond)


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    state = pod(request)
    name = state.config.model_name
    # vLLM's ModelCard and ModelPermission stamp `created` when the list is built
    # (vllm-project/vllm: vllm/entrypoints/serve/engine/protocol.py).
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": state.config.engine_profile.model,
                "parent": None,
                "max_model_len": state.serving.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{random_uuid()}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
        ],
    }


@router.get("/health")
@router.get("/ping")
@router.post("/ping")
async def health(request: Request) -> Response:
    # A dead engine: a bare 503 (vllm-project/vllm: .../serve/instrumentator/health.py).
    return Response(status_code=200 if pod(request).runner.alive else 503)


@router.get("/load")
async def load(request: Request) -> dict[str, int]:
    return {"server_load": pod(request).server_load}


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": VLLM_VERSION}


@router.post("/tokenize")
async def tokenize(request: Request, body: TokenizeRequest) -> dict[str, Any]:
    state = pod(request)
    state.serving.check_model(body.model)
    tokenizer = state.serving.tokenizer
    if body.messages is not None:
        text = render_chat([m.model_dump() for m in body.messages])
    elif body.prompt is not None:
        text = body.prompt
    else:
        raise OpenAIError(400, "Either prompt or messages must be given.", param="prompt")
    tokens = tokenizer.encode(text, add_special_tokens=body.add_special_tokens)
    return {
        "count": len(tokens),
        "max_model_len": state.serving.max_model_len,
        "tokens": tokens,
        "token_strs": tokenizer.token_strings(tokens) if body.return_token_strs else None,
    }


@router.post("/detokenize")
async def detokenize(request: Request, body: DetokenizeRequest) -> dict[str, str]:
    state = pod(request)
    state.serving.check_model(body.model)
    return {"prompt": state.serving.tokenizer.decode(body.tokens)}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = pod(request)
    await state.faults.metrics_flowing.wait()  # an injected stall: answer once lifted
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
