"""The simulated vLLM pod's HTTP server: vLLM's routes, shapes, metrics and errors."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.kvcache.tokenizer import load_tokenizer
from tandem.logs import EventLog
from tandem.simulator.config import VLLM_VERSION, SimPodConfig
from tandem.simulator.engine import Engine
from tandem.simulator.errors import install_error_handlers
from tandem.simulator.faults import METRICS_STALL_SIGNAL, FaultInjector
from tandem.simulator.http_metrics import HttpMetricsMiddleware
from tandem.simulator.kv_connector import ProducerIdentity
from tandem.simulator.kv_events import KVEventPublisher
from tandem.simulator.metrics import build_registry
from tandem.simulator.routes import PodState, router
from tandem.simulator.runner import EngineRunner, KVDrain, ModelClock
from tandem.simulator.serving import OpenAIServing
from tandem.simulator.transfer import KVTransport, SideChannelClient, SideChannelServer

logger = EventLog(__name__)


def _exit_process() -> None:
    logger.error("injected_crash", action="exiting")
    os._exit(70)


def _shut_down_server() -> None:
    """Stop serving gracefully, as vLLM's API server does once its engine has died
    (vllm-project/vllm: vllm/entrypoints/launchers/launcher.py, terminate_if_errored)."""
    logger.error("engine_dead", action="shutting_down")
    os.kill(os.getpid(), signal.SIGTERM)


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

    parts = _PodParts(config, engine, registry, transport, crash, shutdown)
    app = FastAPI(
        title="tandem simulated vLLM",
        version=VLLM_VERSION,
        lifespan=lambda app: _lifespan(app, parts),
    )
    install_error_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, metrics=http_metrics)
    if config.enable_request_id_headers:
        app.add_middleware(RequestIdHeaderMiddleware)
    app.include_router(router)
    return app


@dataclass(frozen=True, slots=True)
class _PodParts:
    """What the app factory builds before serving: the engine and its metrics registry."""

    config: SimPodConfig
    engine: Engine
    registry: CollectorRegistry
    transport: KVTransport | None
    crash: Callable[[], None]
    shutdown: Callable[[], None]


@asynccontextmanager
async def _lifespan(app: FastAPI, parts: _PodParts) -> AsyncIterator[None]:
    """Owns the engine loop, the KV side channel and the KV event publisher while the pod
    serves; the routes find them in `app.state.pod`."""
    config, engine, registry = parts.config, parts.engine, parts.registry
    transport, crash, shutdown = parts.transport, parts.crash, parts.shutdown
    # The port is bound once start-up is over: until then vLLM refuses connections.
    if config.faults.ready_delay_s:
        await asyncio.sleep(config.faults.ready_delay_s)
    events = config.kv_events_config
    publisher = (
        KVEventPublisher(events, host=config.host)
        if events is not None and events.publishes
        else None
    )
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
        crash=crash,
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
        # uvicorn has stopped accepting connections and finished the requests in flight; the
        # side channel stays open until decoders have read the KV this pod still holds.
        if config.kv_role is not None:
            _log_drain(await runner.drain_held_kv(config.drain_timeout_s))
    finally:
        if stall_signal:
            asyncio.get_running_loop().remove_signal_handler(METRICS_STALL_SIGNAL)
        await runner.stop()
        await side_channel.stop()
        if publisher is not None:
            await publisher.stop()


def _log_drain(drain: KVDrain) -> None:
    fields = {
        "held": drain.held,
        "expired": drain.expired,
        "left": drain.left,
        "waited_s": f"{drain.waited_s:.3f}",
    }
    if drain.left:
        logger.warning("kv_drain_timed_out", **fields)
    else:
        logger.info("kv_drained", **fields)


def _on_signal(signum: signal.Signals, handler: Callable[[], None]) -> bool:
    """Call `handler` on `signum`, where this loop may take signals (the main thread's);
    returns whether it was installed."""
    try:
        asyncio.get_running_loop().add_signal_handler(signum, handler)
    except (RuntimeError, ValueError):
        return False
    logger.info("fault_signal", signal=signum.name)
    return True


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
