"""What the scraper reads from a pod's /metrics."""

from __future__ import annotations

import pytest

from tandem.errors import MetricsParseError
from tandem.orchestrator.scraper import parse_engine_metrics

EXPOSITION = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="deferred"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0
"""


def test_the_scheduler_view_of_a_pod() -> None:
    metrics = parse_engine_metrics(EXPOSITION, scraped_at=4.0)
    assert (metrics.running, metrics.waiting, metrics.kv_usage) == (3, 7, 0.25)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (16, 1000)
    assert metrics.waiting_for_capacity == 2  # the other five wait for their KV
    assert metrics.scraped_at == 4.0


def test_an_engine_that_does_not_say_why_requests_wait() -> None:
    without = "\n".join(line for line in EXPOSITION.splitlines() if "by_reason" not in line)
    assert parse_engine_metrics(without, 0.0).waiting_for_capacity is None


def test_metrics_without_the_engine_families_are_refused() -> None:
    with pytest.raises(MetricsParseError, match="missing metrics"):
        parse_engine_metrics("# TYPE tandem_sidecar_vllm_up gauge\ntandem_sidecar_vllm_up 0\n", 0.0)
