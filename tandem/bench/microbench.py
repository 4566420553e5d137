"""Micro-benchmarks of the orchestrator's own cost: scheduling time and gateway latency.

    tandem microbench scheduler   # median pick time, 16 endpoints, 7,200-token prompts
    tandem microbench gateway     # added latency of the gateway hop at 50 requests/s
    tandem microbench sidecar     # added latency of the sidecar hop at 50 requests/s
    tandem microbench ext-proc    # Envoy endpoint-picker decisions/s and decision latency
    tandem microbench precise-index  # pick time with the KV-event index; its memory

Each writes a JSON file with the raw figures; none is asserted in tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from tandem.cluster.readiness import wait_ready
from tandem.discovery.endpoints import ROLE_LABEL, Endpoint
from tandem.kvcache.events import BlockStored, EventBatch
from tandem.kvcache.hashing import external_hash, hash_prompt_blocks
from tandem.kvcache.tokenizer import SYNTHETIC_WORDS, SyntheticTokenizer
from tandem.orchestrator.config import CONFIG_DIR, parse_orchestrator_config
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.ext_proc import add_ext_proc_servicer
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.config import build_scheduler, load_config_file
from tandem.orchestrator.scheduling.precise_index import PreciseIndex
from tandem.orchestrator.scheduling.scheduler import Scheduler
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    EngineMetrics,
    EnginePrompt,
    SchedulingRequest,
)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        ms = sorted(s * 1000 for s in seconds)
        quantiles = statistics.quantiles(ms, n=100, method="inclusive")
        return cls(
            len(ms), statistics.median(ms), quantiles[89], quantiles[98], statistics.fmean(ms)
        )


def _text(num_tokens: int, rng: random.Random, prefix: str = "") -> str:
    words = " ".join(rng.choice(SYNTHETIC_WORDS) for _ in range(num_tokens))
    return prefix + " " + words


def scheduler_pick_time(
    *, endpoints: int = 16, prompt_tokens: int = 7200, requests: int = 2000, seed: int = 1
) -> dict[str, object]:
    """Time `Scheduler.schedule` for P/D requests of a shared-prefix workload."""
    rng = random.Random(seed)
    scheduler = build_scheduler(
        load_config_file(CONFIG_DIR / "tandem.yaml"), rng=random.Random(seed)
    )
    views = _pool_views(endpoints, rng)
    # 150 groups sharing a 6,000-token system prompt, as in the benchmark workload.
    system = [_text(6000, rng) for _ in range(150)]
    chars_per_token = 4.0
    timings = _pick_times(
        scheduler, views, system, rng, requests, prompt_tokens,
        lambda name, prompt: SchedulingRequest(name, prompt, prompt_tokens),
    )  # fmt: skip
    return {
        "endpoints": endpoints,
        "prompt_tokens": prompt_tokens,
        "prompt_chars_per_token_estimate": chars_per_token,
        "pick_time": asdict(timings),
    }


def _pick_times(
    scheduler: Scheduler, views: list[EndpointView], system: list[str], rng: random.Random,
    requests: int, prompt_tokens: int, make: Callable[[str, str], SchedulingRequest],
) -> LatencySummary:  # fmt: skip
    """`Scheduler.schedule` time for `requests` prompts, each a random group's system prompt
    and a question of its own; the first tenth (warm-up) is left out."""
    timings: list[float] = []
    for index in range(requests):
        prompt = system[rng.randrange(len(system))] + _text(prompt_tokens - 6000, rng)
        request = make(f"r{index}", prompt)
        started = time.perf_counter()
        scheduler.schedule(request, views, now=0.0)
        timings.append(time.perf_counter() - started)
    return LatencySummary.of(timings[requests // 10 :])


def precise_index_figures(
    *, endpoints: int = 16, prompt_tokens: int = 7200, requests: int = 2000, seed: int = 1,
    memory_blocks: int = 1_000_000,
) -> dict[str, object]:  # fmt: skip
    """Pick time with `tandem-precise.yaml` (tokenizing and hashing each prompt as the engine
    does, matching the KV-event index, entering it speculatively), for the shared-prefix
    shape of `scheduler_pick_time` with every pod holding some groups' system prompts; and
    the index's memory per million block hashes held."""
    rng = random.Random(seed)
    scheduler = build_scheduler(
        load_config_file(CONFIG_DIR / "tandem-precise.yaml"), rng=random.Random(seed)
    )
    precise = scheduler.precise
    assert precise is not None
    views = _pool_views(endpoints, rng)
    system = [_text(6000, rng) for _ in range(150)]
    tokenizer = SyntheticTokenizer()
    for view in views:  # each pod holds a tenth of the groups' prompts, as its events said
        held = rng.sample(range(150), 15)
        hashes = [h for g in held for h in _engine_hashes(tokenizer.encode(system[g]))]
        precise.index.apply(
            view.name, 0, EventBatch(0.0, (BlockStored(tuple(hashes), None, (), 16),)), now=0.0
        )
    timings = _pick_times(
        scheduler, views, system, rng, requests, prompt_tokens,
        lambda name, prompt: SchedulingRequest(
            name, prompt, prompt_tokens, engine_prompt=EnginePrompt(text=prompt)
        ),
    )  # fmt: skip
    return {
        "endpoints": endpoints,
        "prompt_tokens": prompt_tokens,
        "pick_time": asdict(timings),
        "index_bytes_per_million_blocks": _index_bytes(memory_blocks, endpoints, rng)
        * 1_000_000
        // memory_blocks,
    }


def _engine_hashes(token_ids: list[int]) -> list[int]:
    return [external_hash(h) for h in hash_prompt_blocks(token_ids, 16)]


def _index_bytes(blocks: int, endpoints: int, rng: random.Random) -> int:
    """Memory an index takes to hold `blocks` distinct hashes over `endpoints` pods, each
    hash on one pod and a tenth of them on a second too (a prefix both computed)."""
    index = PreciseIndex()
    names = [f"pod-{i}" for i in range(endpoints)]
    for name in names:
        index.add_endpoint(name)
    per = blocks // endpoints
    hashes = [rng.getrandbits(64) for _ in range(per * endpoints)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for position, name in enumerate(names):
        mine = hashes[position * per : (position + 1) * per]
        shared = hashes[((position + 1) % endpoints) * per :][: per // 10]
        stored = BlockStored(tuple(mine + shared), None, (), 16)
        index.apply(name, 0, EventBatch(0.0, (stored,)), now=0.0)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert index.num_hashes == per * endpoints
    return used


def _pool_views(endpoints: int, rng: random.Random) -> list[EndpointView]:
    """Half prefill, half decode pods with random load, as one scrape would report them."""
    return [
        EndpointView(
            Endpoint(f"pod-{i}", "10.0.0.1", 8000 + i,
                     {ROLE_LABEL: "prefill" if i < endpoints // 2 else "decode"}),
            EngineMetrics(rng.randint(0, 20), rng.randint(0, 100), rng.random(), 0.0, 16, 28125),
            metrics_fresh=True,
            in_flight=rng.randint(0, 50),
        )
        for i in range(endpoints)
    ]  # fmt: skip


def ext_proc_decision_time(
    *, endpoints: int = 16, prompt_tokens: int = 7200, requests: int = 2000,
    concurrency: int = 1, seed: int = 1,
) -> dict[str, object]:  # fmt: skip
    """Decisions per second and decision latency of the ext_proc endpoint picker, served
    in-process on loopback gRPC and driven as Envoy drives it: request headers, the body in
    16 KiB chunks, then a short response. A decision's latency runs from sending the last
    body chunk to receiving the answer to the request headers."""
    return asyncio.run(_ext_proc_run(endpoints, prompt_tokens, requests, max(1, concurrency), seed))


async def _ext_proc_run(
    endpoints: int, prompt_tokens: int, requests: int, concurrency: int, seed: int
) -> dict[str, object]:
    rng = random.Random(seed)
    config = parse_orchestrator_config({"scheduler": "tandem", "seed": seed})
    router = Router(
        config=config,
        scheduler=build_scheduler(config.scheduler_config(), rng=random.Random(seed)),
        store=EndpointStore(config.scrape.staleness_s),
        metrics=GatewayMetrics(),
        clock=lambda: 0.0,  # the synthetic scrapes below never age
    )
    views = _pool_views(endpoints, rng)
    router.on_endpoints([view.endpoint for view in views])
    for view in views:
        assert view.metrics is not None
        router.store.record_scrape(view.name, view.metrics)
        router.on_scrape(view.endpoint, view.metrics, None)
    system = [_text(6000, rng) for _ in range(150)]  # as in scheduler_pick_time
    bodies = [  # written before the clock starts: only the picker's path is timed
        json.dumps(
            {"model": "bench", "prompt": system[rng.randrange(150)]
             + _text(prompt_tokens - 6000, rng), "max_tokens": 1}
        ).encode()
        for _ in range(requests)
    ]  # fmt: skip
    server = grpc.aio.server()
    add_ext_proc_servicer(server, router, config)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    latencies: list[float] = []
    pending = iter(bodies)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ext_proc_grpc.ExternalProcessorStub(channel)

            async def stream_requests() -> None:
                for body in pending:  # shared: each request is taken by one stream
                    latencies.append(await _envoy_exchange(stub, body))

            started = time.perf_counter()
            await asyncio.gather(*(stream_requests() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    finally:
        await server.stop(None)
    states = [router.store.state(endpoint.name) for endpoint in router.store.endpoints()]
    return {
        "endpoints": endpoints,
        "prompt_tokens": prompt_tokens,
        "requests": requests,
        "concurrency": concurrency,
        "mean_body_bytes": statistics.fmean(len(body) for body in bodies),
        "decisions_per_s": requests / elapsed,
        "decision_latency": asdict(LatencySummary.of(latencies[requests // 10 :])),  # warm-up
        "in_flight_after": sum(state.in_flight for state in states if state is not None),
    }


def _ext_proc_message(**fields: Any) -> Any:
    return ext_proc_pb2.ProcessingRequest(**fields)


_REQUEST_HEADERS = base_pb2.HeaderMap(
    headers=[
        base_pb2.HeaderValue(key=key, raw_value=value)
        for key, value in ((":method", b"POST"), (":path", b"/v1/completions"),
                           ("content-type", b"application/json"))
    ]
)  # fmt: skip


async def _envoy_exchange(stub: Any, body: bytes, chunk_bytes: int = 16_384) -> float:
    """One request's ext_proc stream as Envoy sends it; returns the decision latency."""
    call = stub.Process()
    await call.write(
        _ext_proc_message(request_headers=ext_proc_pb2.HttpHeaders(headers=_REQUEST_HEADERS))
    )
    chunks = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    for chunk in chunks[:-1]:
        await call.write(_ext_proc_message(request_body=ext_proc_pb2.HttpBody(body=chunk)))
    last = ext_proc_pb2.HttpBody(body=chunks[-1], end_of_stream=True)
    sent = time.perf_counter()
    await call.write(_ext_proc_message(request_body=last))
    pick = await call.read()
    latency = time.perf_counter() - sent
    if pick.WhichOneof("response") != "request_headers":
        raise RuntimeError(f"the picker answered {pick.WhichOneof('response')}, not a pick")
    while True:  # the body handed back, up to its end
        reply = await call.read()
        if reply.request_body.response.body_mutation.streamed_response.end_of_stream:
            break
    response = ext_proc_pb2.HttpHeaders(headers=base_pb2.HeaderMap())
    await call.write(_ext_proc_message(response_headers=response))
    answer = ext_proc_pb2.HttpBody(body=b"{}", end_of_stream=True)
    await call.write(_ext_proc_message(response_body=answer))
    await call.read()  # response headers answered
    await call.read()  # response body echoed: the request's load is released
    await call.done_writing()
    await call.read()  # end of stream
    return latency


async def _open_loop(
    url: str, rate: float, duration_s: float, body: dict[str, object]
) -> list[float]:
    """Send at a fixed rate for `duration_s` (bounded), return each request's latency."""
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> None:
            started = time.perf_counter()
            reply = await client.post(url, json=body)
            reply.raise_for_status()
            latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        for index in range(int(rate * duration_s)):
            await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


def hop_added_latency(
    front: str, *, rate: float = 50.0, duration_s: float = 20.0, base_port: int = 18210,
    workdir: Path = Path("results"), pod_time_scale: float = 1.0,
) -> dict[str, object]:  # fmt: skip
    """p50 latency of a non-streaming request through `front` ("gateway" or "sidecar") vs
    straight to the pod, and through a bare httpx proxy in the same run (the floor any Python
    proxy built on httpx pays on this machine)."""
    pod_port, front_port, bare_port = base_port, base_port + 1, base_port + 2
    workdir.mkdir(parents=True, exist_ok=True)
    tandem = [sys.executable, "-m", "tandem"]
    if front == "gateway":
        config = workdir / "microbench-gateway.yaml"
        endpoint = {"name": "pod", "host": "127.0.0.1", "port": pod_port, "role": "both"}
        config.write_text(json.dumps({"endpoints": [endpoint], "gateway": {"port": front_port}}))
        front_argv = [*tandem, "orchestrator", "--config", str(config)]
        front_ready = f"http://127.0.0.1:{front_port}/ready"
    elif front == "sidecar":
        front_argv = [*tandem, "sidecar", "--port", str(front_port), "--vllm-port", str(pod_port)]
        front_ready = f"http://127.0.0.1:{front_port}/health"
    else:
        raise ValueError(f"unknown front {front!r}: gateway or sidecar")
    processes = [
        subprocess.Popen(
            [*tandem, "sim", "--port", str(pod_port), "--side-channel-port",
             str(pod_port + 1000), "--log-level", "warning", "--time-scale", str(pod_time_scale)]
        ),
        subprocess.Popen([*front_argv, "--log-level", "warning"]),
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tandem.bench.bare_proxy:app", "--port",
             str(bare_port), "--log-level", "warning", "--no-access-log"],
            env={**os.environ, "TANDEM_BARE_PROXY_UPSTREAM": f"http://127.0.0.1:{pod_port}"},
        ),
    ]  # fmt: skip
    body: dict[str, object] = {"prompt": "How far is the moon?", "max_tokens": 1}

    def measure(port: int, process: subprocess.Popen[bytes] | None) -> tuple[list[float], float]:
        cpu_before = _cpu_seconds(process.pid) if process else 0.0
        url = f"http://127.0.0.1:{port}/v1/completions"
        latencies = asyncio.run(_open_loop(url, rate, duration_s, body))
        cpu = (_cpu_seconds(process.pid) - cpu_before) if process else 0.0
        return latencies, 1000 * cpu / max(1, len(latencies))

    try:
        pod = f"http://127.0.0.1:{pod_port}/health"
        wait_ready(lambda: httpx.get(pod, timeout=1), pod, timeout_s=30)
        wait_ready(lambda: httpx.get(front_ready, timeout=1), front_ready, timeout_s=30)
        bare_url = f"http://127.0.0.1:{bare_port}/v1/completions"
        wait_ready(
            lambda: httpx.post(bare_url, json={"prompt": "x", "max_tokens": 1}, timeout=2),
            bare_url, timeout_s=30,
        )  # fmt: skip
        direct, _ = measure(pod_port, None)
        via, front_cpu = measure(front_port, processes[1])
        bare, bare_cpu = measure(bare_port, processes[2])
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
    direct_summary, via_summary = LatencySummary.of(direct), LatencySummary.of(via)
    bare_summary = LatencySummary.of(bare)
    return {
        "front": front,
        "rate_per_s": rate,
        "duration_s": duration_s,
        "pod_time_scale": pod_time_scale,
        "direct": asdict(direct_summary),
        f"via_{front}": asdict(via_summary),
        "via_bare_httpx_proxy": asdict(bare_summary),
        "added_p50_ms": via_summary.p50_ms - direct_summary.p50_ms,
        "bare_proxy_added_p50_ms": bare_summary.p50_ms - direct_summary.p50_ms,
        f"{front}_cpu_ms_per_request": front_cpu,
        "bare_proxy_cpu_ms_per_request": bare_cpu,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), including scrapes it did."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
