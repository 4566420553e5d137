"""Run real uvicorn servers on loopback, each in its own thread and event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from tandem.http.tls import ServerTLS
from tandem.simulator.config import SimPodConfig
from tandem.simulator.server import create_app


def _ephemeral_port() -> int:
    """A port the kernel picks (Linux's ephemeral range, 32768 and up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the ephemeral range:
    there, an outgoing connection could take it between this check and the server's bind."""
    while True:
        port = 10_000 + _ephemeral_port() % 10_000
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def cluster_base_port() -> int:
    """A base port for a local cluster (`ClusterSpec.base_port`): its pods, side channels and
    KV event ports (up to about base + 2,100) stay below Linux's ephemeral range (32768 and
    up), where another test's outgoing connection could hold one, and above `free_port`'s."""
    return 20_000 + _ephemeral_port() % 10_000


@contextmanager
def serve(
    app: FastAPI, port: int, startup_timeout_s: float = 20.0, tls: ServerTLS | None = None
) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:`port` for the duration of the block (over TLS with `tls`);
    yields its base URL."""
    # A stream a client holds open (a Kubernetes watch, say) is cut a second into the
    # shutdown: uvicorn would otherwise wait for it, and the join below would time out.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
        **(tls.uvicorn_options() if tls is not None else {}),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"{'https' if tls is not None else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def pod_config(**overrides: object) -> SimPodConfig:
    """A small, fast simulated pod on free loopback ports."""
    values: dict[str, object] = {
        "port": free_port(),
        "side_channel_port": free_port(),
        "enable_prompt_tokens_details": True,
        "enable_server_load_tracking": True,
        # A pod stopped at the end of a test does not wait for decoders to read the KV it
        # still holds (many tests leave some behind on purpose); tests of the drain set it.
        "kv_drain_timeout": 0.0,
    }
    values.update(overrides)
    return SimPodConfig.model_validate(values)


@contextmanager
def running_pod(config: SimPodConfig, tls: ServerTLS | None = None) -> Iterator[str]:
    """A simulated pod serving on loopback; yields its base URL."""
    with serve(create_app(config), config.port, tls=tls) as url:
        yield url


def scrape(url: str) -> dict[str, float]:
    """`/metrics` as {"name{label=value,...}": value}, labels sorted, for assertions."""
    return parse_samples(httpx.get(f"{url}/metrics", timeout=10).text)


def parse_samples(text: str) -> dict[str, float]:
    """A Prometheus exposition as {"name{label=value,...}": value}, labels sorted, without
    the model_name and engine labels."""
    from prometheus_client.parser import text_string_to_metric_families

    parsed: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(
                f"{k}={v}"
                for k, v in sorted(sample.labels.items())
                if k not in ("model_name", "engine")
            )
            parsed[f"{sample.name}{{{labels}}}"] = sample.value
    return parsed


def wait_until(predicate: object, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    """Poll `predicate()` until it is true or the timeout passes; returns the last result."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
