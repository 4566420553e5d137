"""The simulated pod's /metrics has vLLM's metric names, types and label sets.

Expected values are taken from vLLM 0.33.0's source: vllm/v1/metrics/loggers.py
(`PrometheusStatLogger`, labels `model_name` and `engine`), vllm/v1/metrics/stats.py
(prompt-token sources), vllm/v1/engine/__init__.py (finish reasons), vllm/config/cache.py
(`CacheConfig.metrics_info`), vllm/v1/metrics/perf.py and
vllm/distributed/kv_transfer/kv_connector/v1/nixl/stats.py (`NixlPromMetrics`).
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import parse_samples, pod_config, running_pod

BASE = frozenset({"model_name", "engine"})

# family name (as the parser reports it, without _total) → (type, label names)
ENGINE_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "vllm:num_requests_running": ("gauge", BASE),
    "vllm:num_requests_waiting": ("gauge", BASE),
    "vllm:num_requests_waiting_by_reason": ("gauge", BASE | {"reason"}),
    "vllm:engine_sleep_state": ("gauge", BASE | {"sleep_state"}),
    "vllm:kv_cache_usage_perc": ("gauge", BASE),
    "vllm:prefix_cache_queries": ("counter", BASE),
    "vllm:prefix_cache_hits": ("counter", BASE),
    "vllm:external_prefix_cache_queries": ("counter", BASE),
    "vllm:external_prefix_cache_hits": ("counter", BASE),
    "vllm:mm_cache_queries": ("counter", BASE),
    "vllm:mm_cache_hits": ("counter", BASE),
    "vllm:num_preemptions": ("counter", BASE),
    "vllm:prompt_tokens": ("counter", BASE),
    "vllm:prompt_tokens_by_source": ("counter", BASE | {"source"}),
    "vllm:prompt_tokens_cached": ("counter", BASE),
    "vllm:prompt_tokens_cached_by_source": ("counter", BASE | {"source"}),
    "vllm:generation_tokens": ("counter", BASE),
    "vllm:request_success": ("counter", BASE | {"finished_reason"}),
    "vllm:admission_rejections": ("counter", frozenset({"model_name", "reason"})),
    "vllm:estimated_flops_per_gpu": ("counter", BASE),
    "vllm:estimated_read_bytes_per_gpu": ("counter", BASE),
    "vllm:estimated_write_bytes_per_gpu": ("counter", BASE),
    "vllm:request_prompt_tokens": ("histogram", BASE),
    "vllm:request_generation_tokens": ("histogram", BASE),
    "vllm:iteration_tokens_total": ("histogram", BASE),
    "vllm:request_max_num_generation_tokens": ("histogram", BASE),
    "vllm:request_params_n": ("histogram", BASE),
    "vllm:request_params_max_tokens": ("histogram", BASE),
    "vllm:time_to_first_token_seconds": ("histogram", BASE),
    "vllm:inter_token_latency_seconds": ("histogram", BASE),
    "vllm:request_time_per_output_token_seconds": ("histogram", BASE),
    "vllm:e2e_request_latency_seconds": ("histogram", BASE),
    "vllm:request_queue_time_seconds": ("histogram", BASE),
    "vllm:request_inference_time_seconds": ("histogram", BASE),
    "vllm:request_prefill_time_seconds": ("histogram", BASE),
    "vllm:request_decode_time_seconds": ("histogram", BASE),
    "vllm:request_num_preemptions": ("histogram", BASE),
    "vllm:request_prefill_kv_computed_tokens": ("histogram", BASE),
}
NIXL_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "vllm:nixl_xfer_time_seconds": ("histogram", BASE),
    "vllm:nixl_post_time_seconds": ("histogram", BASE),
    "vllm:nixl_bytes_transferred": ("histogram", BASE),
    "vllm:nixl_num_descriptors": ("histogram", BASE),
    "vllm:nixl_num_failed_transfers": ("counter", BASE),
    "vllm:nixl_num_failed_notifications": ("counter", BASE),
    "vllm:nixl_num_kv_expired_reqs": ("counter", BASE),
    "vllm:nixl_num_notifications_after_expiry": ("counter", BASE),
}
# vLLM's single API server exposes prometheus_client's global registry: the library's default
# collectors, and the HTTP metrics of prometheus-fastapi-instrumentator's `metrics.default()`
# (vllm/entrypoints/serve/instrumentator/metrics.py).
PROCESS_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "python_gc_objects_collected": ("counter", frozenset({"generation"})),
    "python_gc_objects_uncollectable": ("counter", frozenset({"generation"})),
    "python_gc_collections": ("counter", frozenset({"generation"})),
    "python_info": (
        "gauge", frozenset({"implementation", "major", "minor", "patchlevel", "version"}),
    ),
    "process_virtual_memory_bytes": ("gauge", frozenset()),
    "process_resident_memory_bytes": ("gauge", frozenset()),
    "process_start_time_seconds": ("gauge", frozenset()),
    "process_cpu_seconds": ("counter", frozenset()),
    "process_open_fds": ("gauge", frozenset()),
    "process_max_fds": ("gauge", frozenset()),
}  # fmt: skip
HTTP_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "http_requests": ("counter", frozenset({"method", "status", "handler"})),
    "http_request_size_bytes": ("summary", frozenset({"handler"})),
    "http_response_size_bytes": ("summary", frozenset({"handler"})),
    "http_request_duration_highr_seconds": ("histogram", frozenset()),
    "http_request_duration_seconds": ("histogram", frozenset({"method", "handler"})),
}
BASE_METRICS = ENGINE_METRICS | PROCESS_METRICS | HTTP_METRICS
CONSUMER_METRICS = {"vllm:num_requests_kv_fetch_by_stage": ("gauge", BASE | {"stage"})}
CACHE_CONFIG_LABELS = (
    "block_size", "user_specified_block_size", "kv_cache_layout", "prefix_match_unit",
    "gpu_memory_utilization", "cache_dtype", "is_attention_free", "num_gpu_blocks_override",
    "sliding_window", "enable_prefix_caching", "prefix_caching_hash_algo",
    "prefix_cache_retention_interval", "kv_cache_dtype_skip_layers", "mamba_page_size_padded",
    "skip_page_size_padded", "mamba_block_size", "mamba_cache_dtype", "mamba_ssm_cache_dtype",
    "mamba_cache_mode", "enable_mamba_shared_prefix_checkpoint", "replayssm_buffer_len",
    "use_replayssm", "use_kda_recoverssm", "num_gpu_blocks", "num_cpu_blocks",
    "simple_cpu_offload_num_blocks", "effective_attention_block_size", "kv_cache_size_tokens",
    "kv_cache_max_concurrency", "hash_block_size", "cache_hit_alignment_tokens",
    "kv_sharing_fast_prefill", "swa_bounded_replay", "kv_cache_memory_bytes",
    "kv_offloading_size", "kv_offloading_backend", "_block_size_resolved", "engine",
)  # fmt: skip
LABEL_VALUES = {
    "vllm:request_success": ("finished_reason", {"stop", "length", "abort", "error", "repetition"}),
    "vllm:prompt_tokens_by_source": (
        "source", {"local_compute", "local_cache_hit", "external_kv_transfer"},
    ),
    "vllm:prompt_tokens_cached_by_source": (
        "source", {"device", "host", "p2p", "disk", "external_unspecified"},
    ),
    "vllm:num_requests_waiting_by_reason": ("reason", {"capacity", "deferred"}),
}  # fmt: skip


def families(kv_role: str | None) -> dict[str, tuple[str, frozenset[str], list[str]]]:
    config = pod_config(kv_role=kv_role, time_scale=0.05)
    with running_pod(config) as url:
        httpx.post(f"{url}/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=10)
        text = httpx.get(f"{url}/metrics", timeout=10).text
    found: dict[str, tuple[str, frozenset[str], list[str]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation timestamps; vLLM exposes them too
        labels = {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}
        first = family.samples[0].labels if family.samples else {}
        found[family.name] = (family.type, frozenset(labels), list(first))
    return found


@pytest.mark.parametrize(
    ("kv_role", "expected"),
    [
        (None, BASE_METRICS),
        ("kv_producer", BASE_METRICS | NIXL_METRICS),
        ("kv_consumer", BASE_METRICS | NIXL_METRICS | CONSUMER_METRICS),
    ],
)
def test_metric_names_types_and_labels_are_vllms(
    kv_role: str | None, expected: dict[str, tuple[str, frozenset[str]]]
) -> None:
    found = families(kv_role)
    info = found.pop("vllm:cache_config_info")

    assert {name: (kind, labels) for name, (kind, labels, _) in found.items()} == expected
    assert info[0] == "gauge"
    assert set(info[2]) == set(CACHE_CONFIG_LABELS)  # exposition sorts label names


@pytest.mark.parametrize("metric", sorted(LABEL_VALUES))
def test_label_values_are_vllms(metric: str) -> None:
    config = pod_config(time_scale=0.05)
    label, values = LABEL_VALUES[metric]
    with running_pod(config) as url:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == metric)

    assert {s.labels[label] for s in family.samples if label in s.labels} == values


def test_http_metrics_count_inference_routes_but_not_probes() -> None:
    config = pod_config(time_scale=0.05)
    with running_pod(config) as url:
        httpx.post(f"{url}/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=10)
        httpx.post(f"{url}/v1/completions", json={"prompt": ""}, timeout=10)
        httpx.get(f"{url}/v1/nothing", timeout=10)
        httpx.get(f"{url}/health", timeout=10)
        httpx.get(f"{url}/load", timeout=10)
        samples = parse_samples(httpx.get(f"{url}/metrics", timeout=10).text)

    requests = {k: v for k, v in samples.items() if k.startswith("http_requests_total")}
    assert requests == {
        "http_requests_total{handler=/v1/completions,method=POST,status=2xx}": 1,
        "http_requests_total{handler=/v1/completions,method=POST,status=4xx}": 1,
        "http_requests_total{handler=none,method=GET,status=4xx}": 1,
    }
    assert samples["http_request_duration_highr_seconds_count{}"] == 3
    assert samples["http_request_duration_seconds_bucket{handler=none,le=+Inf,method=GET}"] == 1


def test_large_histogram_bounds_are_written_as_prometheus_client_writes_them() -> None:
    config = pod_config(kv_role="kv_producer", time_scale=0.05)
    with running_pod(config) as url:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    bounds = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("vllm:nixl_bytes_transferred_bucket")
    ]

    assert "2.097152e+06" in bounds
    assert not [bound for bound in bounds if bound.endswith(".0") and len(bound) > 8]
