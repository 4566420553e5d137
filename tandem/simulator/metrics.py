"""Prometheus exposition of a simulated pod with vLLM's metric names and labels.

Values are read from the engine at scrape time (a custom collector), so nothing is counted
twice and the numbers are the engine's own, in model time. Names, types, labels, help texts
and buckets follow vLLM 0.33 (vllm-project/vllm: vllm/v1/metrics/loggers.py, buckets.py;
the KV-connector metrics from vllm/distributed/kv_transfer/kv_connector/v1/nixl/stats.py,
registered only when a connector is configured).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from tandem.pods.launch import KVRole
from tandem.simulator.engine import Engine
from tandem.simulator.http_metrics import HttpMetrics
from tandem.simulator.stats import EngineStats, Histogram

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHE_HIT_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
WAITING_REASONS = ("capacity", "deferred")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
KV_FETCH_STAGES = ("waiting_to_start", "in_progress", "completed_waiting")
ADMISSION_REJECTION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")


def _request_histograms(stats: EngineStats) -> tuple[tuple[str, str, Histogram], ...]:
    return (
        ("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
         stats.prompt_tokens_per_request),
        ("vllm:request_generation_tokens", "Number of generation tokens processed.",
         stats.generation_tokens_per_request),
        ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
         stats.iteration_tokens),
        ("vllm:request_max_num_generation_tokens",
         "Histogram of maximum number of requested generation tokens.",
         stats.max_generation_tokens_per_request),
        ("vllm:request_params_n", "Histogram of the n request parameter.", stats.params_n),
        ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
         stats.params_max_tokens),
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
         stats.ttft),
        ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
         stats.inter_token_latency),
        ("vllm:request_time_per_output_token_seconds",
         "Histogram of time_per_output_token_seconds per request.",
         stats.time_per_output_token),
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
         stats.e2e_latency),
        ("vllm:request_queue_time_seconds",
         "Histogram of time spent in WAITING phase for request.", stats.queue_time),
        ("vllm:request_inference_time_seconds",
         "Histogram of time spent in RUNNING phase for request.", stats.inference_time),
        ("vllm:request_prefill_time_seconds",
         "Histogram of time spent in PREFILL phase for request.", stats.prefill_time),
        ("vllm:request_decode_time_seconds",
         "Histogram of time spent in DECODE phase for request.", stats.decode_time),
        ("vllm:request_num_preemptions",
         "Histogram of the number of times a request was preempted.",
         stats.num_preemptions_per_request),
        ("vllm:request_prefill_kv_computed_tokens",
         "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
         stats.prefill_kv_computed_tokens),
    )  # fmt: skip


class EngineCollector(Collector):
    """Collects one engine's metrics under `model_name` and `engine` labels."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        cache_config: Mapping[str, str],
        kv_role: KVRole | None,
    ) -> None:
        self._engine = engine
        self._model_name = model_name
        self._cache_config = dict(cache_config)
        self._kv_role = kv_role
        self._labels = ["model_name", "engine"]
        self._values = [model_name, "0"]
        self._created = time.time()

    def collect(self) -> Iterator[Metric]:
        yield from self._gauges()
        yield from self._counters()
        for name, doc, histogram in _request_histograms(self._engine.stats):
            yield self._histogram(name, doc, histogram)
        if self._kv_role is not None:
            yield from self._connector()

    # -- builders --------------------------------------------------------------------------

    def _gauge(
        self, name: str, doc: str, values: Mapping[str, float], label: str | None = None
    ) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(name, doc, labels=self._labels + ([label] if label else []))
        for key, value in values.items():
            gauge.add_metric(self._values + ([key] if label else []), value)
        return gauge

    def _counter(
        self, name: str, doc: str, values: Mapping[str, float], label: str | None = None
    ) -> CounterMetricFamily:
        counter = CounterMetricFamily(name, doc, labels=self._labels + ([label] if label else []))
        for key, value in values.items():
            counter.add_metric(
                self._values + ([key] if label else []), value, created=self._created
            )
        return counter

    def _histogram(self, name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=self._labels)
        family.add_metric(self._values, histogram.cumulative(), histogram.total)
        labels = dict(zip(self._labels, self._values, strict=True))
        family.samples.append(Sample(f"{name}_created", labels, self._created))
        return family

    # -- families --------------------------------------------------------------------------

    def _gauges(self) -> Iterator[Metric]:
        engine = self._engine
        deferred = engine.num_waiting_for_remote_kv
        yield self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            {"": engine.num_running},
        )  # fmt: skip
        yield self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            {"": engine.num_waiting},
        )  # fmt: skip
        yield self._gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, "
            "KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            {"capacity": engine.num_waiting - deferred, "deferred": deferred},
            label="reason",
        )
        yield self._gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
            "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep "
            "level 2.",
            {"awake": 1, "weights_offloaded": 0, "discard_all": 0},
            label="sleep_state",
        )
        yield self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
            {"": engine.kv_usage},
        )  # fmt: skip
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=[*self._cache_config, "engine"],
        )
        info.add_metric([*self._cache_config.values(), "0"], 1.0)
        yield info
        if self._kv_role in ("kv_consumer", "kv_both"):
            yield self._gauge(
                "vllm:num_requests_kv_fetch_by_stage",
                "Number of waiting requests by async KV load stage. Stage labels: "
                "'waiting_to_start' = needs an async KV load that has not started; "
                "'in_progress' = load started and not yet reported finished; "
                "'completed_waiting' = load finished, request not running yet.",
                engine.kv_fetch_stages(),
                label="stage",
            )

    def _counters(self) -> Iterator[Metric]:
        stats = self._engine.stats
        by_source = stats.prompt_tokens_by_source
        cached = by_source["local_cache_hit"] + by_source["external_kv_transfer"]
        yield self._counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            {"": stats.prefix_cache_queries},
        )
        yield self._counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            {"": stats.prefix_cache_hits},
        )
        yield self._counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, in "
            "terms of number of queried tokens.",
            {"": stats.external_prefix_cache_queries},
        )
        yield self._counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, in "
            "terms of number of cached tokens.",
            {"": stats.external_prefix_cache_hits},
        )
        yield self._counter(
            "vllm:mm_cache_queries",
            "Multi-modal cache queries, in terms of number of queried items.", {"": 0},
        )  # fmt: skip
        yield self._counter(
            "vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.",
            {"": 0},
        )  # fmt: skip
        yield self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
            {"": stats.num_preemptions},
        )  # fmt: skip
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.",
            {"": stats.prompt_tokens},
        )  # fmt: skip
        yield self._counter(
            "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
            {source: by_source[source] for source in PROMPT_TOKEN_SOURCES}, label="source",
        )  # fmt: skip
        yield self._counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).",
            {"": cached},
        )  # fmt: skip
        hit_tiers = dict.fromkeys(CACHE_HIT_SOURCES, 0)
        hit_tiers["device"] = stats.prefix_cache_hits
        hit_tiers["p2p"] = stats.external_prefix_cache_hits
        yield self._counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), "
            "host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
            "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
            "vllm:external_prefix_cache_hits.",
            hit_tiers,
            label="source",
        )
        yield self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed.",
            {"": stats.generation_tokens},
        )  # fmt: skip
        yield self._counter(
            "vllm:request_success", "Count of successfully processed requests.",
            {reason: stats.request_success[reason] for reason in FINISH_REASONS},
            label="finished_reason",
        )  # fmt: skip
        rejections = CounterMetricFamily(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            labels=["model_name", "reason"],
        )
        for reason in ADMISSION_REJECTION_REASONS:
            rejections.add_metric([self._model_name, reason], 0, created=self._created)
        yield rejections
        for name, what in (
            ("vllm:estimated_flops_per_gpu", "number of floating point operations per GPU "
             "(for Model Flops Utilization calculations)"),
            ("vllm:estimated_read_bytes_per_gpu", "bytes read from memory per GPU"),
            ("vllm:estimated_write_bytes_per_gpu", "bytes written to memory per GPU"),
        ):  # fmt: skip
            yield self._counter(name, f"Estimated {what}.", {"": 0})

    def _connector(self) -> Iterator[Metric]:
        transfer = self._engine.stats.transfer
        prefix = "Histogram of"
        for name, doc, histogram in (
            ("vllm:nixl_xfer_time_seconds",
             f"{prefix} transfer duration for NIXL KV Cache transfers.", transfer.xfer_time),
            ("vllm:nixl_post_time_seconds",
             f"{prefix} transfer post time for NIXL KV Cache transfers.", transfer.post_time),
            ("vllm:nixl_bytes_transferred",
             f"{prefix} bytes transferred per NIXL KV Cache transfers.",
             transfer.bytes_transferred),
            ("vllm:nixl_num_descriptors",
             f"{prefix} number of descriptors per NIXL  KV Cache transfers.",
             transfer.num_descriptors),
        ):  # fmt: skip
            yield self._histogram(name, doc, histogram)
        yield self._counter(
            "vllm:nixl_num_failed_transfers",
            "Number of failed NIXL KV Cache transfers, including handshake and notification "
            "failures. NOTE: KV expiry is tracked separately in vllm:nixl_num_kv_expired_reqs.",
            {"": transfer.num_failed_transfers + transfer.num_failed_notifications},
        )
        yield self._counter(
            "vllm:nixl_num_failed_notifications",
            "Number of failed NIXL KV Cache notifications. Retained for compatibility; these "
            "failures are also included in vllm:nixl_num_failed_transfers.",
            {"": transfer.num_failed_notifications},
        )
        yield self._counter(
            "vllm:nixl_num_kv_expired_reqs",
            "Number of requests that had their KV expire. NOTE: This metric is tracked on the "
            "P instance.",
            {"": transfer.num_kv_expired_reqs},
        )
        yield self._counter(
            "vllm:nixl_num_notifications_after_expiry",
            "Number of completion notifications for requests that were no longer tracked, "
            "usually because their KV lease expired. The KV blocks may have been reused before "
            "the transfer finished. Counted per notification (one per remote rank), not per "
            "request.",
            {"": transfer.num_notifications_after_expiry},
        )


def build_registry(
    engine: Engine, model_name: str, cache_config: Mapping[str, str], kv_role: KVRole | None
) -> tuple[CollectorRegistry, HttpMetrics]:
    """A fresh registry holding only this pod's metrics (no process-global state).

    vLLM's single API server exposes prometheus_client's global registry, so its `/metrics`
    also carries the library's default collectors (`python_gc_*`, `python_info`,
    `process_*`, in that order of registration) and the HTTP metrics of its instrumentator.
    """
    registry = CollectorRegistry(auto_describe=False)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    ProcessCollector(registry=registry)
    registry.register(EngineCollector(engine, model_name, cache_config, kv_role))
    return registry, HttpMetrics(registry)
