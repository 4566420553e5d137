"""The simulated vLLM pod's HTTP server: vLLM's routes, shapes, metrics and errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.background import BackgroundTask
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvcache.tokenizer import load_tokenizer, render_chat
from mesh.errors import CLIENT_CLOSED_REQUEST, OpenAIError
from mesh.logs import EventLog
from simulator.config import VLLM_VERSION, SimPodConfig
from simulator.engine import Engine
from simulator.errors import install_error_handlers, require_json
from simulator.faults import FAULT_ERRORS, METRICS_STALL_SIGNAL, FaultInjector
from simulator.http_metrics import HttpMetricsMiddleware
from simulator.kv_connector import ProducerIdentity
from simulator.kv_events import KVEventPublisher
from simulator.metrics import build_registry
from simulator.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from simulator.runner import EngineRunner, ModelClock
from simulator.serving import OpenAIServing, PreparedRequest, random_uuid
from simulator.streaming import chat_stream, completion_stream
from simulator.transfer import KVTransport, SideChannelClient, SideChannelServer

logger = EventLog(__name__)


def _exit_process() -> None:
    logger.error("injected_crash", action="exiting")
    os._exit(70)


def _shut_down_server() -> None:
    """Stop serving gracefully, as vLLM's API server does once its engine has died
    (vllm-project/vllm: vllm/entrypoints/launchers/launcher.py, terminate_if_errored)."""
    logger.error("engine_dead", action="shutting_down")
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass(slots=True)
class PodState:
    """What the routes share; built by the lifespan."""

    config: SimPodConfig
    runner: EngineRunner
    serving: OpenAIServing
    registry: CollectorRegistry
    faults: FaultInjector
    server_load: int = 0


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
    shutdown: Callable[[], None] = _shut_down_server,
) -> FastAPI:
    """A simulated vLLM pod; its lifespan owns the engine loop and the KV side channel.

    `crash` ends the process on an injected crash; `shutdown` stops the server after the
    engine died and in-flight requests were failed."""
    engine = Engine(
        config.engine_config(),
        ProducerIdentity(
            engine_id=config.engine_id,
            side_channel_host=config.side_channel_host,
            side_channel_port=config.side_channel_port,
            tp_size=config.engine_profile.tensor_parallel_size,
        ),
    )
    registry, http_metrics = build_registry(
        engine,
        config.model_name,
        cache_config_labels(config, engine.config.num_gpu_blocks),
        config.kv_role,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The port is bound once start-up is over: until then vLLM refuses connections.
        if config.faults.ready_delay_s:
            await asyncio.sleep(config.faults.ready_delay_s)
        events = config.kv_events_config
        publisher = KVEventPublisher(events) if events is not None and events.publishes else None
        if publisher is not None:
            publisher.start()
        runner = EngineRunner(
            engine,
            config.engine_profile,
            ModelClock(config.time_scale),
            transport or SideChannelClient(),
            on_dead=shutdown,
            on_kv_events=publisher.publish if publisher is not None else None,
        )
        side_channel = SideChannelServer(
            config.side_channel_host, config.side_channel_port, runner.handle_side_channel
        )
        await side_channel.start()
        runner.start()
        faults = FaultInjector(config.faults)
        app.state.pod = PodState(
            config=config,
            runner=runner,
            serving=OpenAIServing(config, runner, load_tokenizer(config.tokenizer)),
            registry=registry,
            faults=faults,
        )
        stall_signal = _on_signal(METRICS_STALL_SIGNAL, faults.toggle_metrics_stall)
        logger.info(
            "pod_started",
            role=config.role,
            model=config.model_name,
            profile=config.profile,
            port=config.port,
            side_channel=f"{config.side_channel_host}:{config.side_channel_port}",
            engine_id=config.engine_id,
        )
        try:
            yield
        finally:
            if stall_signal:
                asyncio.get_running_loop().remove_signal_handler(METRICS_STALL_SIGNAL)
            await runner.stop()
            await side_channel.stop()
            if publisher is not None:
                await publisher.stop()

    app = FastAPI(title="tandem simulated vLLM", version=VLLM_VERSION, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=http_metrics)
    if config.enable_request_id_headers:
        app.add_middleware(RequestIdHeaderMiddleware)

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
            crash()
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

    @app.post("/v1/completions", dependencies=[Depends(require_json)])
    async def completions(request: Request, body: CompletionRequest) -> Response:
        def prepare(state: PodState) -> PreparedRequest:
            return state.serving.prepare_completion(body, request.headers.get("x-request-id"))

        async def respond(state: PodState, prepared: PreparedRequest) -> Response:
            if body.stream:
                events = completion_stream(state.serving, prepared)
                return StreamingResponse(events, media_type="text/event-stream")
            return JSONResponse(await state.serving.completion(prepared))

        return await inference(request, body.kv_transfer_params, prepare, respond)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_json)])
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        def prepare(state: PodState) -> PreparedRequest:
            return state.serving.prepare_chat(body, request.headers.get("x-request-id"))

        async def respond(state: PodState, prepared: PreparedRequest) -> Response:
            if body.stream:
                events = chat_stream(state.serving, prepared)
                return StreamingResponse(events, media_type="text/event-stream")
            return JSONResponse(await state.serving.chat(prepared))

        return await inference(request, body.kv_transfer_params, prepare, respond)

    @app.get("/v1/models")
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

    @app.get("/health")
    @app.get("/ping")
    @app.post("/ping")
    async def health(request: Request) -> Response:
        # A dead engine: a bare 503 (vllm-project/vllm: .../serve/instrumentator/health.py).
        return Response(status_code=200 if pod(request).runner.alive else 503)

    @app.get("/load")
    async def load(request: Request) -> dict[str, int]:
        return {"server_load": pod(request).server_load}

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
        state = pod(request)
        await state.faults.metrics_flowing.wait()  # an injected stall: answer once lifted
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _on_signal(signum: signal.Signals, handler: Callable[[], None]) -> bool:
    """Call `handler` on `signum`, where this loop may take signals (the main thread's);
    returns whether it was installed."""
    try:
        asyncio.get_running_loop().add_signal_handler(signum, handler)
    except (RuntimeError, ValueError):
        return False
    logger.info("fault_signal", signal=signum.name)
    return True


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


class RequestIdHeaderMiddleware:
    """`--enable-request-id-headers`: every response carries X-Request-Id, the request's or a
    new uuid4 hex (vllm-project/vllm: vllm/entrypoints/serve/middleware/x_request_id.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_headers = Headers(scope=scope)

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=message["headers"])
                headers.append(
                    "X-Request-Id", request_headers.get("X-Request-Id", uuid.uuid4().hex)
                )
            await send(message)

        await self.app(scope, receive, send_with_request_id)


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
