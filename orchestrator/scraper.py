"""Background scraping of each pod's vLLM `/metrics` into the endpoint store.

One task per endpoint polls at the configured interval with the shared HTTP client, parses
the text with prometheus-client's parser, and records waiting/running/KV usage and the cache
geometry. A pod that refuses the connection, or answers without its engine's metrics (a
decode pod's sidecar whose vLLM is down), is excluded from scheduling at once; other failures
(a timeout) are counted, and after `failures_before_unhealthy` in a row exclude it too. A
scrape that succeeds again brings it back. Nothing here runs on a request path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tandem.discovery.endpoints import Endpoint
from tandem.errors import MetricsParseError
from tandem.logs import EventLog
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.scheduling.types import EngineMetrics

logger = EventLog(__name__)

# Older vLLM names are accepted too (the rename blinded KV scoring elsewhere:
# kubernetes-sigs/gateway-api-inference-extension PR #1905).
WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
CACHE_INFO = "vllm:cache_config_info"
WAITING_BY_REASON = "vllm:num_requests_waiting_by_reason"
PROMPT_TOKENS_BY_SOURCE = "vllm:prompt_tokens_by_source"
ITL = "vllm:inter_token_latency_seconds"


_WANTED = (
    *WAITING, *RUNNING, *KV_USAGE, CACHE_INFO, WAITING_BY_REASON, PROMPT_TOKENS_BY_SOURCE,
    f"{ITL}_sum", f"{ITL}_count",
)  # fmt: skip


def _wanted_lines(text: str) -> str:
    """Only the samples the scheduler reads: a vLLM exposition is mostly histogram buckets,
    and parsing all of it at every scrape would cost more than the rest of the gateway."""
    return "\n".join(line for line in text.splitlines() if line.startswith(_WANTED))


def parse_engine_metrics(text: str, scraped_at: float) -> EngineMetrics:
    """The scheduler's view of one pod from its Prometheus text exposition."""
    values: dict[str, float] = {}
    block_size = num_gpu_blocks = None
    waiting_for_capacity: float | None = None
    computed: float | None = None
    for family in text_string_to_metric_families(_wanted_lines(text)):
        for sample in family.samples:
            if sample.name == CACHE_INFO:
                block_size = _int_label(sample.labels, "block_size")
                num_gpu_blocks = _int_label(sample.labels, "num_gpu_blocks")
            elif sample.name == WAITING_BY_REASON:
                if sample.labels.get("reason") == "capacity":
                    waiting_for_capacity = (waiting_for_capacity or 0.0) + sample.value
            elif sample.name == f"{PROMPT_TOKENS_BY_SOURCE}_total":
                if sample.labels.get("source") == "local_compute":
                    computed = (computed or 0.0) + sample.value
            elif sample.name in (*WAITING, *RUNNING, *KV_USAGE, f"{ITL}_sum", f"{ITL}_count"):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    missing = [names[0] for names in (WAITING, RUNNING, KV_USAGE) if _first(values, names) is None]
    if missing:
        raise MetricsParseError(f"missing metrics: {', '.join(missing)}")
    return EngineMetrics(
        waiting=int(_first(values, WAITING) or 0),
        running=int(_first(values, RUNNING) or 0),
        kv_usage=float(_first(values, KV_USAGE) or 0.0),
        scraped_at=scraped_at,
        block_size=block_size,
        num_gpu_blocks=num_gpu_blocks,
        waiting_for_capacity=None if waiting_for_capacity is None else int(waiting_for_capacity),
        computed_prompt_tokens=computed,
        itl_sum_s=values.get(f"{ITL}_sum"),
        itl_count=values.get(f"{ITL}_count"),
    )


def _first(values: dict[str, float], names: Sequence[str]) -> float | None:
    return next((values[name] for name in names if name in values), None)


def _int_label(labels: dict[str, str], key: str) -> int | None:
    try:
        return int(labels[key])
    except (KeyError, ValueError):
        return None


class MetricsScraper:
    """Keeps one polling task per endpoint in the store."""

    def __init__(
        self,
        store: EndpointStore,
        client: httpx.AsyncClient,
        clock: Callable[[], float],
        *,
        interval_s: float,
        timeout_s: float,
        on_scrape: Callable[[Endpoint, EngineMetrics | None, str | None], None] | None = None,
        scheme: str = "http",
    ) -> None:
        self._store = store
        self._scheme = scheme
        self._client = client
        self._clock = clock
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._on_scrape = on_scrape
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def sync(self) -> None:
        """Start tasks for new endpoints and stop those of removed ones."""
        wanted = {e.name: e for e in self._store.endpoints()}
        for name in list(self._tasks):
            if name not in wanted:
                self._tasks.pop(name).cancel()
        for name, endpoint in wanted.items():
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._poll(endpoint), name=f"scrape-{name}")

    async def scrape_once(self, endpoint: Endpoint) -> None:
        """Scrape one endpoint now and record the outcome."""
        url = f"{self._scheme}://{endpoint.address}/metrics"
        try:
            response = await self._client.get(url, timeout=self._timeout_s)
            response.raise_for_status()
            metrics = parse_engine_metrics(response.text, self._clock())
        except (httpx.HTTPError, MetricsParseError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            # The pod said it cannot serve: no point waiting for a second scrape to agree.
            definitive = isinstance(exc, httpx.ConnectError | MetricsParseError) or (
                isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500
            )
            if self._store.record_scrape_failure(endpoint.name, error, definitive=definitive):
                logger.warning("endpoint_unhealthy", endpoint=endpoint.name, error=error)
            if self._on_scrape is not None:
                self._on_scrape(endpoint, None, error)
            return
        state = self._store.state(endpoint.name)
        if state is not None and not state.healthy:
            event = "endpoint_ready" if state.metrics is None else "endpoint_recovered"
            logger.info(event, endpoint=endpoint.name)
        self._store.record_scrape(endpoint.name, metrics)
        if self._on_scrape is not None:
            self._on_scrape(endpoint, metrics, None)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self, endpoint: Endpoint) -> None:
        while True:
            await self.scrape_once(endpoint)
            await asyncio.sleep(self._interval_s)
