"""The simulated vLLM pod's HTTP server: vLLM's routes, shapes, metrics and errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from simulator.config import VLLM_VERSION, SimPodConfig
from simulator.engine import Engine
from simulator.errors import OpenAIError, install_error_handlers
from simulator.faults import FAULT_ERRORS, FaultInjector
from simulator.kv_connector import ProducerIdentity
from simulator.metrics import build_registry
from simulator.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from simulator.runner import EngineRunner, ModelClock
from simulator.serving import OpenAIServing
from simulator.tokenizer import load_tokenizer, render_chat
from simulator.transfer import KVTransport, SideChannelClient, SideChannelServer

logger = logging.getLogger(__name__)


def _exit_process() -> None:
    logger.error("injected_crash exiting")
    os._exit(70)


@dataclass(slots=True)
class PodState:
    """What the routes share; built by the lifespan."""

    config: SimPodConfig
    runner: EngineRunner
    serving: OpenAIServing
    registry: CollectorRegistry
    faults: FaultInjector
    started_at: float
    created: int
    in_flight: int = 0


def cache_config_labels(config: SimPodConfig, num_gpu_blocks: int) -> dict[str, str]:
    """Labels of `vllm:cache_config_info`: vLLM 0.33's CacheConfig fields in order, as strings
    (vllm-project/vllm: vllm/config/cache.py, `metrics_info`)."""
    block_size = str(config.block_size)
    return {
        "block_size": block_size,
        "user_specified_block_size": "True",
        "kv_cache_layout": "None",
        "prefix_match_unit": "None",
        "gpu_memory_utilization": "0.9",
        "cache_dtype": "auto",
        "is_attention_free": "False",
        "num_gpu_blocks_override": str(config.num_gpu_blocks),
        "sliding_window": "None",
        "enable_prefix_caching": str(config.enable_prefix_caching),
        "prefix_caching_hash_algo": "sha256",
        "prefix_cache_retention_interval": "0",
        "kv_cache_dtype_skip_layers": "[]",
        "mamba_page_size_padded": "None",
        "skip_page_size_padded": "False",
        "mamba_block_size": "None",
        "mamba_cache_dtype": "auto",
        "mamba_ssm_cache_dtype": "auto",
        "mamba_cache_mode": "none",
        "enable_mamba_shared_prefix_checkpoint": "False",
        "replayssm_buffer_len": "16",
        "use_replayssm": "False",
        "use_kda_recoverssm": "False",
        "num_gpu_blocks": str(num_gpu_blocks),
        "num_cpu_blocks": "None",
        "simple_cpu_offload_num_blocks": "None",
        "effective_attention_block_size": block_size,
        "kv_cache_size_tokens": str(num_gpu_blocks * config.block_size),
        "kv_cache_max_concurrency": "None",
        "hash_block_size": block_size,
        "cache_hit_alignment_tokens": block_size,
        "kv_sharing_fast_prefill": "False",
        "swa_bounded_replay": "True",
        "kv_cache_memory_bytes": "None",
        "kv_offloading_size": "None",
        "kv_offloading_backend": "native",
        "_block_size_resolved": "True",
    }


def create_app(
    config: SimPodConfig,
    *,
    transport: KVTransport | None = None,
    crash: Callable[[], None] = _exit_process,
) -> FastAPI:
    """A simulated vLLM pod; its lifespan owns the engine loop and the KV side channel."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine_config = config.engine_config()
        engine = Engine(
            engine_config,
            ProducerIdentity(
                engine_id=config.engine_id,
                side_channel_host=config.side_channel_host,
                side_channel_port=config.side_channel_port,
                tp_size=config.engine_profile.tensor_parallel_size,
            ),
        )
        runner = EngineRunner(
            engine,
            config.engine_profile,
            ModelClock(config.time_scale),
            transport or SideChannelClient(),
        )
        side_channel = SideChannelServer(
            config.side_channel_host, config.side_channel_port, runner.handle_side_channel
        )
        await side_channel.start()
        runner.start()
        app.state.pod = PodState(
            config=config,
            runner=runner,
            serving=OpenAIServing(config, runner, load_tokenizer(config.tokenizer)),
            registry=build_registry(
                engine,
                config.model_name,
                cache_config_labels(config, engine_config.num_gpu_blocks),
                config.kv_role,
            ),
            faults=FaultInjector(config.faults),
            started_at=time.monotonic(),
            created=int(time.time()),
        )
        logger.info(
            "pod_started role=%s model=%s profile=%s port=%d side_channel=%s:%d engine_id=%s",
            config.role, config.model_name, config.profile, config.port,
            config.side_channel_host, config.side_channel_port, config.engine_id,
        )  # fmt: skip
        try:
            yield
        finally:
            await runner.stop()
            await side_channel.stop()

    app = FastAPI(title="tandem simulated vLLM", version=VLLM_VERSION, lifespan=lifespan)
    install_error_handlers(app)

    def pod(request: Request) -> PodState:
        state: PodState = request.app.state.pod
        return state

    async def inference(
        request: Request, handler: Callable[[PodState, str], Awaitable[Response]]
    ) -> Response:
        """Request id, load tracking, faults and client-disconnect cancellation."""
        state = pod(request)
        base_id = request.headers.get("x-request-id") or f"{uuid.uuid4().int & (2**64 - 1):016x}"
        decision = state.faults.decide()
        if decision.crash:
            crash()
        state.in_flight += 1
        try:
            if decision.delay_s:
                await asyncio.sleep(decision.delay_s)
            if decision.hang:
                await _until_disconnected(request)
                return Response(status_code=_CLIENT_CLOSED)
            if decision.error_status is not None:
                kind, message = FAULT_ERRORS[decision.error_status]
                raise OpenAIError(decision.error_status, message, type=kind)
            response = await _cancel_on_disconnect(request, handler(state, base_id))
        finally:
            state.in_flight -= 1
        response.headers["x-request-id"] = base_id
        return response

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        async def handle(state: PodState, base_id: str) -> Response:
            generations = state.serving.prepare_completion(body, base_id)
            if body.stream:
                events = state.serving.completion_stream(generations[0], body, base_id)
                return StreamingResponse(events, media_type="text/event-stream")
            return JSONResponse(await state.serving.completion(generations, base_id))

        return await inference(request, handle)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        async def handle(state: PodState, base_id: str) -> Response:
            generation = state.serving.prepare_chat(body, base_id)
            if body.stream:
                events = state.serving.chat_stream(generation, body, base_id)
                return StreamingResponse(events, media_type="text/event-stream")
            return JSONResponse(await state.serving.chat(generation, base_id))

        return await inference(request, handle)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        state = pod(request)
        name = state.config.model_name
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "vllm",
                    "root": state.config.engine_profile.model,
                    "parent": None,
                    "max_model_len": state.serving.max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{uuid.uuid4().hex}",
                            "object": "model_permission",
                            "created": state.created,
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

    @app.get("/health")
    @app.get("/ping")
    @app.post("/ping")
    async def health(request: Request) -> Response:
        state = pod(request)
        if not state.runner.alive:
            return JSONResponse(
                OpenAIError(503, state.runner.dead_reason or "engine dead").body(), 503
            )
        if time.monotonic() - state.started_at < state.config.faults.ready_delay_s:
            return JSONResponse(OpenAIError(503, "The engine is still starting.").body(), 503)
        return Response(status_code=200)

    @app.get("/load")
    async def load(request: Request) -> dict[str, int]:
        state = pod(request)
        return {"server_load": state.in_flight if state.config.enable_server_load_tracking else 0}

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VLLM_VERSION}

    @app.post("/tokenize")
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

    @app.post("/detokenize")
    async def detokenize(request: Request, body: DetokenizeRequest) -> dict[str, str]:
        state = pod(request)
        state.serving.check_model(body.model)
        return {"prompt": state.serving.tokenizer.decode(body.tokens)}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(pod(request).registry), media_type=CONTENT_TYPE_LATEST)

    return app


_CLIENT_CLOSED = 499
"""nginx's status for a request whose client went away; written to no one."""


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
    return Response(status_code=_CLIENT_CLOSED)  # nobody reads it; the work is cancelled
