"""The load generator: sends a request sequence on its schedule and times every response.

Requests are streamed completions (`stream_options.include_usage`, `ignore_eos`, exactly
`max_tokens` output tokens), as the published harness sends them. TTFT is the time to the
first chunk with text, ITL the gaps between later chunks, end-to-end the time to [DONE]; all
converted to model seconds by the time scale. The generator also watches itself: how late it
sends requests, and how busy the machine's CPUs are, so a report can say when the machine,
not the system under test, set the numbers; and, where the target is a tandem orchestrator
with scaling signals, each pool's desired replicas as the run goes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tandem.bench.generate import BenchRequest, PromptSet, next_turns
from tandem.bench.records import RequestRecord

REJECT_REASON_HEADER = "x-tandem-reject-reason"
"""Why tandem refused a request it did not serve (admission control)."""

REQUEST_TIMEOUT_S = 1800.0
"""Wall-clock cap per request, so a run always ends."""


@dataclass(slots=True)
class CpuSampler:
    """Share of busy CPU time between samples, from /proc/stat (Linux)."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    _last: tuple[int, int] | None = None

    def sample(self, at: float) -> None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total = sum(values)
        if self._last is not None:
            d_total = total - self._last[0]
            d_idle = idle - self._last[1]
            if d_total > 0:
                self.samples.append((at, 1.0 - d_idle / d_total))
        self._last = (total, idle)

    def busy_between(self, start: float, end: float) -> float | None:
        values = [busy for at, busy in self.samples if start <= at <= end]
        return sum(values) / len(values) if values else None


DESIRED_REPLICAS = "tandem_pool_desired_replicas"


@dataclass(slots=True)
class DesiredReplicasSampler:
    """Each pool's desired replicas as the orchestrator at `metrics_url` exports them
    (`tandem_pool_desired_replicas`), sampled during a run; none from a target without them."""

    metrics_url: str
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    async def sample(self, client: httpx.AsyncClient, at: float) -> None:
        try:
            text = (await client.get(self.metrics_url, timeout=5.0)).text
        except httpx.HTTPError:
            return
        desired = {
            sample.labels["pool"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == DESIRED_REPLICAS
            for sample in family.samples
        }
        if desired:
            self.samples.append((at, desired))

    def during(self, stage: int, start: float, end: float) -> dict[str, float] | None:
        """Each pool's mean over the samples taken from `start` to `end` (model seconds), the
        span of `stage` (`tandem.bench.summary.StageDesiredReplicas`: a live run goes by
        time)."""
        taken = [desired for at, desired in self.samples if start <= at <= end]
        pools = {pool for desired in taken for pool in desired}
        if not pools:
            return None
        return {
            pool: sum(d[pool] for d in taken if pool in d) / sum(pool in d for d in taken)
            for pool in sorted(pools)
        }


async def _one(
    client: httpx.AsyncClient,
    url: str,
    model: str | None,
    request: BenchRequest,
    prompt: str,
    record: RequestRecord,
    clock: Callable[[], float],
) -> None:
    body: dict[str, object] = {
        "prompt": prompt,
        "max_tokens": request.max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    sent = clock()
    last: float | None = None
    try:
        async with client.stream(
            "POST", url, json=body, headers={"x-request-id": request.request_id}
        ) as response:
            record.status = response.status_code
            if response.status_code != 200:
                record.error = (await response.aread()).decode(errors="replace")[:500]
                record.reject_reason = response.headers.get(REJECT_REASON_HEADER)
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    record.error = str(event["error"].get("message"))
                    return
                now = clock()
                if event.get("choices") and event["choices"][0].get("text"):
                    if last is None:
                        record.ttft_s = now - sent
                    else:
                        record.itl_s.append(now - last)
                    last = now
                usage = event.get("usage")
                if usage:
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                    details = usage.get("prompt_tokens_details") or {}
                    if details.get("cached_tokens") is not None:
                        record.cached_tokens = int(details["cached_tokens"])
        record.e2e_s = clock() - sent
        record.success = record.ttft_s is not None and record.error is None
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    except json.JSONDecodeError as exc:
        record.error = f"bad stream event: {exc}"


async def run_load(
    url: str,
    model: str | None,
    requests: Sequence[BenchRequest],
    prompts: PromptSet,
    time_scale: float,
    *,
    on_done: Callable[[RequestRecord], None] | None = None,
    cpu: CpuSampler | None = None,
    desired: DesiredReplicasSampler | None = None,
    sample_interval_s: float = 1.0,
) -> list[RequestRecord]:
    """Send every request at its arrival time (scaled to wall time), a conversation's later
    turns each a think time after the turn before has ended; return their records."""
    start = time.perf_counter()

    def model_clock() -> float:
        return (time.perf_counter() - start) / time_scale

    records: list[RequestRecord] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=2048)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def send(request: BenchRequest, record: RequestRecord) -> None:
            await _one(
                client, url, model, request, prompts.text(request), record, model_clock,
            )  # fmt: skip
            if on_done is not None:
                on_done(record)

        async def watch_cpu() -> None:
            while cpu is not None:
                cpu.sample(model_clock())
                await asyncio.sleep(0.5)

        async def watch_desired() -> None:
            while desired is not None:
                await desired.sample(client, model_clock())
                await asyncio.sleep(sample_interval_s)

        watchers = [asyncio.create_task(watch()) for watch in (watch_cpu, watch_desired)]
        following = next_turns(requests)

        def record_of(request: BenchRequest, scheduled_s: float) -> RequestRecord:
            record = RequestRecord(
                request_id=request.request_id,
                stage=request.stage,
                scheduled_s=scheduled_s,
                sent_s=model_clock(),
                prompt_tokens=prompts.tokens(request),
                max_tokens=request.max_tokens,
                group=request.group,
            )
            records.append(record)
            return record

        async def converse(request: BenchRequest) -> None:
            """A request, then the turns that follow it, each a think time after the
            answer before it ended (whether it succeeded or not: the history is fixed)."""
            await send(request, record_of(request, request.arrival_s))
            while (turn := following.get(request.index)) is not None:
                due = model_clock() + turn.think_s
                await asyncio.sleep(turn.think_s * time_scale)
                await send(turn, record_of(turn, due))
                request = turn

        tasks = []
        for request in requests:
            if request.follows is not None:
                continue  # sent by its conversation
            delay = request.arrival_s * time_scale - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(converse(request)))
        await asyncio.gather(*tasks)
        for watcher in watchers:
            watcher.cancel()
    return records
