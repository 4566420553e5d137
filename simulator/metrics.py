"""Prometheus exposition of a simulated pod with vLLM's metric names and labels.

Values are read from the engine at scrape time (a custom collector), so nothing is counted
twice and the numbers are the engine's own, in model time. Names, types, labels and buckets
follow vLLM 0.33 (vllm-project/vllm: vllm/v1/metrics/loggers.py; KV-connector metrics from
vllm/distributed/kv_transfer/kv_connector/v1/nixl/stats.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from simulator.engine import Engine
from simulator.stats import Histogram

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
WAITING_REASONS = ("capacity", "deferred")


class EngineCollector(Collector):
    """Collects one engine's metrics under `model_name` and `engine` labels."""

    def __init__(self, engine: Engine, model_name: str, cache_config: dict[str, str]) -> None:
        self._engine = engine
        self._model_name = model_name
        self._cache_config = cache_config
        self._labels = ["model_name", "engine"]
        self._values = [model_name, "0"]

    def collect(self) -> Iterator[Metric]:
        yield from self._gauges()
        yield from self._counters()
        yield from self._histograms()
        yield from self._connector()

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(name, doc, labels=self._labels)
        gauge.add_metric(self._values, value)
        return gauge

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        counter = CounterMetricFamily(name, doc, labels=self._labels)
        counter.add_metric(self._values, value)
        return counter

    def _labelled_counter(
        self, name: str, doc: str, label: str, values: dict[str, int], keys: Sequence[str]
    ) -> CounterMetricFamily:
        counter = CounterMetricFamily(name, doc, labels=[*self._labels, label])
        for key in keys:
            counter.add_metric([*self._values, key], values.get(key, 0))
        return counter

    def _histogram(self, name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=self._labels)
        family.add_metric(self._values, histogram.cumulative(), histogram.total)
        return family

    def _gauges(self) -> Iterator[Metric]:
        engine = self._engine
        yield self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            engine.num_running,
        )  # fmt: skip
        yield self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            engine.num_waiting,
        )  # fmt: skip
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of requests waiting, by the reason they wait.",
            labels=[*self._labels, "reason"],
        )
        deferred = engine.num_waiting_for_remote_kv
        by_reason.add_metric([*self._values, "capacity"], engine.num_waiting - deferred)
        by_reason.add_metric([*self._values, "deferred"], deferred)
        yield by_reason
        yield self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
            engine.kv_usage,
        )  # fmt: skip
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=[*self._cache_config, "engine"],
        )
        info.add_metric([*self._cache_config.values(), "0"], 1.0)
        yield info

    def _counters(self) -> Iterator[Metric]:
        stats = self._engine.stats
        yield self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
            stats.num_preemptions,
        )  # fmt: skip
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens
        )
        yield self._labelled_counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            "source",
            stats.prompt_tokens_by_source,
            PROMPT_TOKEN_SOURCES,
        )
        yield self._counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            stats.prompt_tokens_by_source["local_cache_hit"]
            + stats.prompt_tokens_by_source["external_kv_transfer"],
        )
        yield self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed.",
            stats.generation_tokens,
        )  # fmt: skip
        yield self._labelled_counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            "finished_reason",
            stats.request_success,
            FINISH_REASONS,
        )
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            stats.prefix_cache_queries,
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            stats.prefix_cache_hits,
        )

    def _histograms(self) -> Iterator[Metric]:
        stats = self._engine.stats
        for name, doc, histogram in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             stats.ttft),
            ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
             stats.inter_token_latency),
            ("vllm:request_time_per_output_token_seconds",
             "Histogram of time_per_output_token_seconds per request.",
             stats.time_per_output_token),
            ("vllm:e2e_request_latency_seconds",
             "Histogram of e2e request latency in seconds.", stats.e2e_latency),
            ("vllm:request_queue_time_seconds",
             "Histogram of time spent in WAITING phase for request.", stats.queue_time),
            ("vllm:request_inference_time_seconds",
             "Histogram of time spent in RUNNING phase for request.", stats.inference_time),
            ("vllm:request_prefill_time_seconds",
             "Histogram of time spent in PREFILL phase for request.", stats.prefill_time),
            ("vllm:request_decode_time_seconds",
             "Histogram of time spent in DECODE phase for request.", stats.decode_time),
            ("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
             stats.prompt_tokens_per_request),
            ("vllm:request_generation_tokens", "Number of generation tokens processed.",
             stats.generation_tokens_per_request),
        ):  # fmt: skip
            yield self._histogram(name, doc, histogram)

    def _connector(self) -> Iterator[Metric]:
        transfer = self._engine.stats.transfer
        yield self._histogram(
            "vllm:nixl_xfer_time_seconds", "Histogram of transfer duration for NIXL KV Cache "
            "transfers.", transfer.xfer_time,
        )  # fmt: skip
        yield self._histogram(
            "vllm:nixl_post_time_seconds", "Histogram of transfer post time for NIXL KV Cache "
            "transfers.", transfer.post_time,
        )  # fmt: skip
        yield self._histogram(
            "vllm:nixl_bytes_transferred", "Histogram of bytes transferred per NIXL KV Cache "
            "transfers.", transfer.bytes_transferred,
        )  # fmt: skip
        yield self._histogram(
            "vllm:nixl_num_descriptors", "Histogram of number of descriptors per NIXL KV Cache "
            "transfers.", transfer.num_descriptors,
        )  # fmt: skip
        yield self._counter(
            "vllm:nixl_num_failed_transfers", "Number of failed NIXL KV Cache transfers.",
            transfer.num_failed_transfers,
        )  # fmt: skip
        yield self._counter(
            "vllm:nixl_num_failed_notifications", "Number of failed NIXL KV Cache notifications.",
            transfer.num_failed_notifications,
        )  # fmt: skip
        yield self._counter(
            "vllm:nixl_num_kv_expired_reqs",
            "Number of requests that had their KV expire before being read.",
            transfer.num_kv_expired_reqs,
        )


def build_registry(
    engine: Engine, model_name: str, cache_config: dict[str, str]
) -> CollectorRegistry:
    """A fresh registry holding only this pod's metrics (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, model_name, cache_config))
    return registry
