"""Stage summaries, goodput and hit rate from hand-computable records."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from tandem.bench.client import DesiredReplicasSampler
from tandem.bench.records import Percentiles, RequestRecord, StageSummary
from tandem.bench.summary import (
    completion_window_s,
    goodput,
    histogram_quantiles,
    hit_rate_from_counters,
    percentiles,
    summarize_stage,
    tail_itl_s,
)

SLO_TTFT_S = 1.0
SLO_ITL_S = 0.05


def _record(
    n: int,
    *,
    success: bool = True,
    ttft_s: float | None = 0.5,
    itl_s: tuple[float, ...] = (0.02, 0.04),
    prompt_tokens: int = 100,
    lag_s: float = 0.0,
    stage: int = 0,
) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{n}",
        stage=stage,
        scheduled_s=float(n),
        sent_s=float(n) + lag_s,
        prompt_tokens=prompt_tokens,
        max_tokens=len(itl_s) + 1,
        success=success,
        status=200 if success else 503,
        ttft_s=ttft_s if success else None,
        e2e_s=(ttft_s or 0.0) + sum(itl_s) if success else None,
        output_tokens=len(itl_s) + 1 if success else 0,
        itl_s=list(itl_s) if success else [],
    )


def _summary(
    rate: float, attainment: float, *, stage: int = 0, tail: float | None = None
) -> StageSummary:
    empty = Percentiles(None, None, None, None)
    return StageSummary(
        stage=stage,
        rate=rate,
        duration_s=10.0,
        requests=10,
        completed=10,
        success_rate=1.0,
        requests_per_s=rate,
        input_tokens_per_s=0.0,
        output_tokens_per_s=0.0,
        total_tokens_per_s=0.0,
        ttft_s=empty,
        itl_s=empty,
        e2e_s=empty,
        slo_attainment=attainment,
        hit_rate=None,
        generator_lag_p99_s=0.0,
        machine_limited=False,
        tail_slo_attainment=tail,
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3.0], (3.0, 3.0, 3.0, 3.0)),
        ([2.0, 1.0], (1.5, 1.9, 1.99, 1.5)),
        # 0..10: position q * 10, so p50 = 5, p90 = 9, p99 = 9.9.
        ([float(v) for v in reversed(range(11))], (5.0, 9.0, 9.9, 5.0)),
        # position 2.7 lies 70 % of the way from 1 to 5.
        ([1.0, 1.0, 1.0, 5.0], (1.0, 3.8, 4.88, 2.0)),
    ],
)
def test_percentiles_interpolate_linearly(
    values: list[float], expected: tuple[float, float, float, float]
) -> None:
    got = percentiles(values)
    assert (got.p50, got.p90, got.p99, got.mean) == pytest.approx(expected)


def test_percentiles_of_nothing_are_none() -> None:
    assert percentiles([]) == Percentiles(None, None, None, None)


def test_throughput_counts_successful_requests_per_second_of_the_stage() -> None:
    records = [
        _record(0, prompt_tokens=100),
        _record(1, prompt_tokens=300, itl_s=(0.01,) * 9),
        _record(2, success=False),
        _record(3, success=False),
    ]
    summary = summarize_stage(
        0, 2.0, 4.0, records, SLO_TTFT_S, SLO_ITL_S, hit_rate=0.5, cpu_saturated=False
    )
    assert summary.requests == 4
    assert summary.completed == 2
    assert summary.success_rate == 0.5
    assert summary.requests_per_s == 0.5
    assert summary.input_tokens_per_s == 100.0  # (100 + 300) / 4
    assert summary.output_tokens_per_s == 3.25  # (3 + 10) / 4
    assert summary.total_tokens_per_s == 103.25
    assert summary.hit_rate == 0.5


@pytest.mark.parametrize(
    ("name", "records", "attainment"),
    [
        ("all good", [_record(0), _record(1)], 1.0),
        ("ttft on the limit meets it", [_record(0, ttft_s=1.0)], 1.0),
        ("ttft over", [_record(0, ttft_s=1.01), _record(1)], 0.5),
        # Mean ITL 0.05 meets the target although one gap (0.08) exceeds it.
        ("mean itl, not max", [_record(0, itl_s=(0.02, 0.08))], 1.0),
        ("mean itl over", [_record(0, itl_s=(0.05, 0.07)), _record(1)], 0.5),
        ("single token has no itl", [_record(0, itl_s=())], 1.0),
        ("single token still needs ttft", [_record(0, itl_s=(), ttft_s=2.0)], 0.0),
        ("failures count against", [_record(0), _record(1, success=False)], 0.5),
        ("no requests", [], 0.0),
    ],
)
def test_slo_attainment_is_a_share_of_all_requests(
    name: str, records: list[RequestRecord], attainment: float
) -> None:
    summary = summarize_stage(
        0, 1.0, 10.0, records, SLO_TTFT_S, SLO_ITL_S, hit_rate=None, cpu_saturated=False
    )
    assert summary.slo_attainment == attainment, name


SLO_ITL_P99_S = 0.1
STALLED = (0.02,) * 98 + (0.3,) * 2
"""A mean of 25.8 ms, within the mean target, with two 0.3 s stalls: a P99 gap of 0.3 s."""


def test_tail_itl_is_the_request_s_own_p99_gap() -> None:
    assert tail_itl_s(_record(0, itl_s=STALLED)) == pytest.approx(0.3)
    # One stall in 100 gaps: position 98.01 lies 1 % of the way from 0.02 to 0.3.
    assert tail_itl_s(_record(0, itl_s=(0.02,) * 99 + (0.3,))) == pytest.approx(0.0228)


@pytest.mark.parametrize(
    ("name", "records", "attainment", "tail"),
    [
        ("smooth meets both", [_record(0, itl_s=(0.02,) * 100)], 1.0, 1.0),
        ("stalls meet the mean, not the tail", [_record(0, itl_s=STALLED), _record(1)], 1.0, 0.5),
        ("tail gap on the limit meets it", [_record(0, itl_s=(0.02,) * 98 + (0.1,) * 2)], 1.0, 1.0),
        ("tail still needs the mean", [_record(0, itl_s=(0.06,) * 10)], 0.0, 0.0),
        ("tail still needs ttft", [_record(0, ttft_s=2.0)], 0.0, 0.0),
        ("single token has no gaps", [_record(0, itl_s=())], 1.0, 1.0),
    ],
)
def test_tail_slo_attainment_also_bounds_each_request_s_p99_gap(
    name: str, records: list[RequestRecord], attainment: float, tail: float
) -> None:
    summary = summarize_stage(
        0, 1.0, 10.0, records, SLO_TTFT_S, SLO_ITL_S, hit_rate=None, cpu_saturated=False,
        slo_itl_p99_s=SLO_ITL_P99_S,
    )  # fmt: skip
    assert (summary.slo_attainment, summary.tail_slo_attainment) == (attainment, tail), name


def test_without_a_tail_bound_there_is_no_tail_attainment() -> None:
    summary = summarize_stage(
        0, 1.0, 10.0, [_record(0)], SLO_TTFT_S, SLO_ITL_S, hit_rate=None, cpu_saturated=False
    )
    assert summary.tail_slo_attainment is None


def test_p90_attainment_judges_ttft_and_tpot_each_alone() -> None:
    """DistServe's form: 10 requests, 1 late (TTFT), 1 slow (TPOT), 1 failed: 80 % within
    each target alone, so the stage's P90s miss, as mean-ITL attainment (70 %) does."""
    records = [_record(n) for n in range(7)] + [
        _record(7, ttft_s=1.5),
        _record(8, itl_s=(0.06, 0.07)),
        _record(9, success=False),
    ]

    summary = summarize_stage(
        0, 1.0, 10.0, records, SLO_TTFT_S, SLO_ITL_S, hit_rate=None, cpu_saturated=False
    )

    assert (summary.slo_attainment, summary.p90_slo_attainment) == (0.7, 0.8)


def test_p90_goodput_walks_the_p90_attainment() -> None:
    stages = [
        dataclasses.replace(_summary(rate, 1.0), p90_slo_attainment=p90)
        for rate, p90 in ((10, 1.0), (20, 0.95), (30, 0.8))
    ]

    assert goodput(stages, form="p90") == pytest.approx(20 + 10 * (0.95 - 0.9) / 0.15)
    with pytest.raises(ValueError, match="p90 SLO form"):
        goodput([_summary(10, 1.0)], form="p90")


def test_tail_goodput_walks_the_tail_attainment() -> None:
    stages = [_summary(10, 1.0, tail=1.0), _summary(20, 1.0, tail=0.7), _summary(30, 1.0, tail=0)]

    assert goodput(stages) == 30
    assert goodput(stages, form="tail") == pytest.approx(10 + 10 * (1.0 - 0.9) / 0.3)
    with pytest.raises(ValueError, match="tail SLO form"):
        goodput([_summary(10, 1.0)], form="tail")


def test_latency_percentiles_cover_successful_requests_and_every_gap() -> None:
    records = [
        _record(0, ttft_s=0.1, itl_s=(0.01, 0.03)),
        _record(1, ttft_s=0.3, itl_s=(0.02,)),
        _record(2, success=False),
    ]
    summary = summarize_stage(
        0, 1.0, 10.0, records, SLO_TTFT_S, SLO_ITL_S, hit_rate=None, cpu_saturated=False
    )
    assert summary.ttft_s.p50 == pytest.approx(0.2)
    assert summary.itl_s.p50 == pytest.approx(0.02)
    assert summary.itl_s.mean == pytest.approx(0.02)
    assert summary.e2e_s.p50 == pytest.approx((0.14 + 0.32) / 2)


@pytest.mark.parametrize(
    ("lags", "cpu_saturated", "limited"),
    [
        ([0.0, 0.1, 0.2], False, False),
        ([0.0, 0.1, 0.2], True, True),
        ([0.0] * 98 + [5.0, 5.0], False, True),  # p99 = 5.0
        ([0.0] * 99 + [5.0], False, False),  # p99 = 0.05: one straggler is not a trend
        ([1.0, 1.0], False, False),  # exactly the limit
    ],
)
def test_machine_limited_when_generator_lags_or_cpu_saturates(
    lags: list[float], cpu_saturated: bool, limited: bool
) -> None:
    records = [_record(n, lag_s=lag) for n, lag in enumerate(lags)]
    summary = summarize_stage(
        0, 1.0, 10.0, records, SLO_TTFT_S, SLO_ITL_S, None, cpu_saturated, lag_limit_s=1.0
    )
    assert summary.machine_limited is limited
    assert summary.generator_lag_p99_s == pytest.approx(percentiles(lags).p99)


def test_summarize_stage_rejects_records_of_another_stage() -> None:
    with pytest.raises(ValueError, match="other stages"):
        summarize_stage(0, 1.0, 1.0, [_record(0, stage=1)], 1.0, 1.0, None, False)


GOODPUT_CASES: list[tuple[str, list[tuple[float, float]], float]] = [
    ("all meet: the top rate", [(5, 1.0), (10, 0.95), (20, 0.9)], 20.0),
    ("none meet: zero", [(5, 0.8), (10, 0.5)], 0.0),
    # 0.95 at 10, 0.85 at 20: crosses 0.9 halfway.
    ("crossing between stages", [(5, 1.0), (10, 0.95), (20, 0.85)], 15.0),
    ("crossing from a full stage", [(10, 1.0), (20, 0.0)], 11.0),
    ("stages out of order", [(20, 0.85), (5, 1.0), (10, 0.95)], 15.0),
    # 1.0 at 5, 0.5 at 10: crosses at 5 + 0.1 / 0.5 * 5; the recovery at 20 is ignored.
    ("stops at the first miss", [(5, 1.0), (10, 0.5), (20, 0.95)], 6.0),
    ("no stages", [], 0.0),
]


@pytest.mark.parametrize(
    ("ladder", "expected"),
    [pytest.param(ladder, expected, id=name) for name, ladder, expected in GOODPUT_CASES],
)
def test_goodput_interpolates_where_attainment_crosses_90_percent(
    ladder: list[tuple[float, float]], expected: float
) -> None:
    stages = [_summary(rate, attainment) for rate, attainment in ladder]
    assert goodput(stages) == pytest.approx(expected)


def test_goodput_threshold_is_configurable() -> None:
    stages = [_summary(10, 1.0), _summary(20, 0.6)]
    assert goodput(stages, threshold=0.5) == 20.0
    assert goodput(stages, threshold=0.8) == pytest.approx(15.0)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (
            {"vllm:prefix_cache_hits_total": 100, "vllm:prefix_cache_queries_total": 200},
            {"vllm:prefix_cache_hits_total": 130, "vllm:prefix_cache_queries_total": 300},
            0.3,
        ),
        # Summed over pods; the other counters and `_created` series are ignored.
        (
            {
                'vllm:prefix_cache_hits_total{pod="a"}': 0,
                'vllm:prefix_cache_queries_total{pod="a"}': 0,
                'vllm:prefix_cache_hits_total{pod="b"}': 10,
                'vllm:prefix_cache_queries_total{pod="b"}': 10,
            },
            {
                'vllm:prefix_cache_hits_total{pod="a"}': 60,
                'vllm:prefix_cache_queries_total{pod="a"}': 100,
                'vllm:prefix_cache_hits_total{pod="b"}': 10,
                'vllm:prefix_cache_queries_total{pod="b"}': 110,
                'vllm:prefix_cache_hits_created{pod="b"}': 1e9,
                'vllm:external_prefix_cache_hits_total{pod="b"}': 500,
            },
            0.3,
        ),
        # A pod first seen after `before` counts from zero; a reset counter counts from zero.
        (
            {"vllm:prefix_cache_hits{pod=a}": 500, "vllm:prefix_cache_queries{pod=a}": 900},
            {
                "vllm:prefix_cache_hits{pod=a}": 20,
                "vllm:prefix_cache_queries{pod=a}": 40,
                "vllm:prefix_cache_hits{pod=b}": 10,
                "vllm:prefix_cache_queries{pod=b}": 60,
            },
            0.3,
        ),
        ({"vllm:prefix_cache_queries_total": 5}, {"vllm:prefix_cache_queries_total": 5}, None),
        ({}, {}, None),
    ],
)
def test_hit_rate_from_counter_deltas(
    before: dict[str, float], after: dict[str, float], expected: float | None
) -> None:
    got = hit_rate_from_counters(before, after)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_completion_window_runs_from_first_send_to_last_completion() -> None:
    records = [_record(0, ttft_s=0.5, itl_s=(0.25,)), _record(2, ttft_s=3.0, itl_s=())]
    records.append(_record(9, success=False))
    assert completion_window_s(records) == pytest.approx(5.0)
    assert completion_window_s([_record(0, success=False)]) is None


def test_refused_requests_count_against_attainment_but_not_admitted_attainment() -> None:
    refused = _record(2, success=False)
    refused.status, refused.reject_reason = 429, "queue_timeout"
    late = _record(1, ttft_s=2.0)
    summary = summarize_stage(
        0, 1.0, 10.0, [_record(0), late, refused], SLO_TTFT_S, SLO_ITL_S,
        hit_rate=None, cpu_saturated=False,
    )  # fmt: skip
    assert summary.rejected == 1
    assert summary.slo_attainment == pytest.approx(1 / 3)
    assert summary.admitted_slo_attainment == pytest.approx(1 / 2)


def test_admitted_attainment_is_none_when_every_request_was_refused() -> None:
    refused = _record(0, success=False)
    refused.reject_reason = "shed"
    summary = summarize_stage(
        0, 1.0, 10.0, [refused], SLO_TTFT_S, SLO_ITL_S, hit_rate=None, cpu_saturated=False
    )
    assert (summary.rejected, summary.admitted_slo_attainment) == (1, None)


def test_histogram_quantiles_are_the_upper_bounds_of_their_buckets() -> None:
    exposition = (
        "# TYPE lag_seconds histogram\n"
        'lag_seconds_bucket{endpoint="a",le="0.001"} 5.0\n'
        'lag_seconds_bucket{endpoint="a",le="0.01"} 9.0\n'
        'lag_seconds_bucket{endpoint="a",le="+Inf"} 10.0\n'
        'lag_seconds_bucket{endpoint="b",le="0.001"} 5.0\n'
        'lag_seconds_bucket{endpoint="b",le="0.01"} 9.0\n'
        'lag_seconds_bucket{endpoint="b",le="+Inf"} 10.0\n'
        'lag_seconds_count{endpoint="a"} 10.0\n'
        'lag_seconds_sum{endpoint="a"} 0.5\n'
    )

    assert histogram_quantiles(exposition, "lag_seconds", (0.5, 0.9, 0.99)) == (
        0.001, 0.01, float("inf"),
    )  # fmt: skip
    assert histogram_quantiles(exposition, "other_seconds", (0.5,)) is None


def test_the_desired_replicas_sampler_reads_the_orchestrators_gauges_and_averages_a_span() -> None:
    expositions = iter([
        'tandem_pool_desired_replicas{pool="prefill"} 2.0\n'
        'tandem_pool_desired_replicas{pool="decode"} 1.0\n',
        'tandem_pool_desired_replicas{pool="prefill"} 4.0\n',
        "vllm:num_requests_running 3.0\n",  # a target without scaling signals
    ])  # fmt: skip
    transport = httpx.MockTransport(lambda _: httpx.Response(200, text=next(expositions)))
    sampler = DesiredReplicasSampler("http://127.0.0.1:1/metrics")

    async def sample_three() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            for at in (1.0, 2.0, 3.0):
                await sampler.sample(client, at)

    asyncio.run(sample_three())

    assert sampler.samples == [(1.0, {"prefill": 2.0, "decode": 1.0}), (2.0, {"prefill": 4.0})]
    assert sampler.during(0, 0.0, 5.0) == {"decode": 1.0, "prefill": 3.0}
    assert sampler.during(0, 1.5, 5.0) == {"prefill": 4.0}
    assert sampler.during(0, 2.5, 5.0) is None
