"""Cumulative engine statistics, kept by the pure core and exported by `metrics.py`.

Keeping counters and histogram buckets here (not in prometheus_client objects) lets the same
numbers come out of a live pod's /metrics and out of a virtual-time simulation.
Histogram buckets are vLLM's (vllm-project/vllm: vllm/v1/metrics/loggers.py, buckets.py).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


def _powers_of_ten_steps(max_value: int, steps: tuple[int, ...]) -> tuple[float, ...]:
    """vLLM's `build_buckets`: [1, 2, 5, 10, 20, 50, ...] up to max_value."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for step in steps:
            value = step * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(float(value))
        exponent += 1


def token_count_buckets(max_model_len: int) -> tuple[float, ...]:
    """Buckets for per-request token-count histograms (1-2-5 series up to max_model_len)."""
    return _powers_of_ten_steps(max_model_len, (1, 2, 5))


@dataclass(slots=True)
class Histogram:
    """Cumulative-friendly histogram: per-bucket counts, sum and count."""

    buckets: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # last slot is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def observe_many(self, value: float, times: int) -> None:
        """`observe(value)` `times` times (the sum may differ from repeated adds by rounding)."""
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.total += value * times
        self.count += times

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, cumulative count) pairs, +Inf last, as Prometheus exposes them."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            # prometheus_client's own spelling of a bound (2.097152e+06, not 2097152.0).
            out.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        return out


# NIXL connector histogram buckets (vllm-project/vllm: nixl stats module).
_POST_TIME_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0,
)  # fmt: skip
_XFER_TIME_BUCKETS = _POST_TIME_BUCKETS[1:]
_XFER_BYTES_BUCKETS = tuple(float(2 ** (10 + i)) for i in range(1, 25, 2))
_DESCRIPTOR_BUCKETS = (
    10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 400.0, 1000.0, 2000.0, 4000.0,
    10000.0, 20000.0, 50000.0,
)  # fmt: skip
ITERATION_TOKENS_BUCKETS = (
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
)  # fmt: skip
PARAMS_N_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0)
NUM_PREEMPTIONS_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0)


@dataclass(slots=True)
class TransferStats:
    """KV-connector (NIXL) statistics, recorded on the side that reads."""

    xfer_time: Histogram = field(default_factory=lambda: Histogram(_XFER_TIME_BUCKETS))
    post_time: Histogram = field(default_factory=lambda: Histogram(_POST_TIME_BUCKETS))
    bytes_transferred: Histogram = field(default_factory=lambda: Histogram(_XFER_BYTES_BUCKETS))
    num_descriptors: Histogram = field(default_factory=lambda: Histogram(_DESCRIPTOR_BUCKETS))
    num_failed_transfers: int = 0
    num_failed_notifications: int = 0
    num_kv_expired_reqs: int = 0
    num_notifications_after_expiry: int = 0


@dataclass(slots=True)
class EngineStats:
    """Everything a vLLM pod counts, in model time."""

    max_model_len: int
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    external_prefix_cache_queries: int = 0
    external_prefix_cache_hits: int = 0
    num_preemptions: int = 0
    prompt_tokens_by_source: Counter[str] = field(default_factory=Counter)
    request_success: Counter[str] = field(default_factory=Counter)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    inter_token_latency: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    time_per_output_token: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e_latency: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    prefill_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    decode_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    inference_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    iteration_tokens: Histogram = field(default_factory=lambda: Histogram(ITERATION_TOKENS_BUCKETS))
    params_n: Histogram = field(default_factory=lambda: Histogram(PARAMS_N_BUCKETS))
    num_preemptions_per_request: Histogram = field(
        default_factory=lambda: Histogram(NUM_PREEMPTIONS_BUCKETS)
    )
    prompt_tokens_per_request: Histogram = field(init=False)
    generation_tokens_per_request: Histogram = field(init=False)
    max_generation_tokens_per_request: Histogram = field(init=False)
    params_max_tokens: Histogram = field(init=False)
    prefill_kv_computed_tokens: Histogram = field(init=False)
    transfer: TransferStats = field(default_factory=TransferStats)

    def __post_init__(self) -> None:
        buckets = token_count_buckets(self.max_model_len)
        self.prompt_tokens_per_request = Histogram(buckets)
        self.generation_tokens_per_request = Histogram(buckets)
        self.max_generation_tokens_per_request = Histogram(buckets)
        self.params_max_tokens = Histogram(buckets)
        self.prefill_kv_computed_tokens = Histogram(buckets)
