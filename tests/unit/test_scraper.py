"""What the scraper reads from a pod's /metrics."""

from __future__ import annotations

import pytest

from tandem.errors import MetricsParseError
from tandem.orchestrator.endpoints import ITL_SMOOTHING, EndpointStore
from tandem.orchestrator.scheduling.types import EngineMetrics
from tandem.orchestrator.scraper import parse_engine_metrics
from tests.unit.scheduling.support import make_endpoint

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
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.05",model_name="m"} 90.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 100.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 100.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 2.5
"""


def test_the_scheduler_view_of_a_pod() -> None:
    metrics = parse_engine_metrics(EXPOSITION, scraped_at=4.0)
    assert (metrics.running, metrics.waiting, metrics.kv_usage) == (3, 7, 0.25)
    assert (metrics.block_size, metrics.num_gpu_blocks) == (16, 1000)
    assert metrics.waiting_for_capacity == 2  # the other five wait for their KV
    assert metrics.scraped_at == 4.0
    assert (metrics.itl_sum_s, metrics.itl_count) == (2.5, 100.0)


def test_an_engine_that_does_not_say_why_requests_wait() -> None:
    without = "\n".join(line for line in EXPOSITION.splitlines() if "by_reason" not in line)
    assert parse_engine_metrics(without, 0.0).waiting_for_capacity is None


def test_metrics_without_the_engine_families_are_refused() -> None:
    with pytest.raises(MetricsParseError, match="missing metrics"):
        parse_engine_metrics("# TYPE tandem_sidecar_vllm_up gauge\ntandem_sidecar_vllm_up 0\n", 0.0)


def _scrape(itl_sum_s: float | None, itl_count: float | None, at: float) -> EngineMetrics:
    return EngineMetrics(0, 4, 0.5, at, itl_sum_s=itl_sum_s, itl_count=itl_count)


def test_a_pods_inter_token_gap_is_learned_from_its_histogram_between_scrapes() -> None:
    store = EndpointStore(staleness_s=60.0)
    store.set_endpoints([make_endpoint("d0", "decode")])

    def learned() -> float | None:
        [view] = store.views(now=0.0)
        return view.itl_s

    store.record_scrape("d0", _scrape(1.0, 10, 0.0))
    assert learned() is None  # one scrape: no interval yet
    store.record_scrape("d0", _scrape(5.0, 110, 1.0))  # 100 gaps of 40 ms
    assert learned() == pytest.approx(0.04)
    store.record_scrape("d0", _scrape(5.0, 110, 2.0))  # no token: nothing new to learn
    assert learned() == pytest.approx(0.04)
    store.record_scrape("d0", _scrape(13.0, 210, 3.0))  # 100 gaps of 80 ms
    assert learned() == pytest.approx(0.04 + ITL_SMOOTHING * (0.08 - 0.04))
    store.record_scrape("d0", _scrape(0.5, 5, 4.0))  # restarted: its counters fell
    assert learned() == pytest.approx(0.04 + ITL_SMOOTHING * (0.08 - 0.04))
    store.record_scrape("d0", _scrape(None, None, 5.0))  # an engine without the histogram
    assert learned() == pytest.approx(0.04 + ITL_SMOOTHING * (0.08 - 0.04))
