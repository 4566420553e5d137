"""One short request trace on a real pod and on a simulated pod with the same block size,
KV capacity and tokenizer: prefix caching must agree request by request (times are not
compared). The trace shares prefixes and holds more distinct prefixes than the KV cache,
so blocks are evicted and re-computed along the way."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.real.conftest import DIFFERENTIAL_BLOCKS, RealCluster
from tests.real.test_conformance import sim_config
from tests.support.pd import BY_SOURCE, MODEL, complete, delta, samples, words
from tests.support.servers import running_pod

PREFIX_WORDS = 1000
ORDER = (0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 4, 5, 0, 1)
"""Which prefix each request starts with. Six prefixes of ~31 blocks each are 186 blocks,
more than the 160 the pods hold: a prefix asked for again at once hits, the most recent
ones still hit at the end, the first ones have been evicted by then."""
COUNTERS = (
    f"{BY_SOURCE}{{source=local_compute}}",
    f"{BY_SOURCE}{{source=local_cache_hit}}",
    "vllm:prefix_cache_hits_total{}",
    "vllm:prefix_cache_queries_total{}",
    "vllm:prompt_tokens_total{}",
)


def trace() -> list[str]:
    """The prefixes in `ORDER`, each request with a suffix of its own."""
    return [
        words(PREFIX_WORDS, offset=100 * prefix) + words(20 + 7 * index, offset=900 + index)
        for index, prefix in enumerate(ORDER)
    ]


def run(url: str) -> tuple[list[int], dict[str, float]]:
    """Each response's cached tokens, and how the pod's cache counters grew."""
    before = samples(url)
    cached = []
    for prompt in trace():
        response = complete(url, {"model": MODEL, "prompt": prompt, "max_tokens": 2})
        assert response.status_code == 200, response.text
        cached.append(response.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
    after = samples(url)
    return cached, {name: delta(before, after, name) for name in COUNTERS}


@pytest.fixture(scope="module")
def simulated(real_pod: RealCluster) -> Iterator[str]:
    with running_pod(sim_config(num_gpu_blocks=DIFFERENTIAL_BLOCKS)) as url:
        yield url


def test_real_pod_has_the_capacity_asked_for(real_pod: RealCluster) -> None:
    text = httpx.get(f"{real_pod.component_url('pod-0')}/metrics", timeout=10).text
    assert f'num_gpu_blocks="{DIFFERENTIAL_BLOCKS}"' in text


def test_prefix_caching_agrees_request_by_request(real_pod: RealCluster, simulated: str) -> None:
    real_cached, real_counters = run(real_pod.component_url("pod-0"))
    sim_cached, sim_counters = run(simulated)

    assert any(real_cached), "the trace should hit the cache"
    assert real_cached[-2:] == [0, 0], "the trace should evict and miss again"
    assert sim_cached == real_cached
    assert sim_counters == real_counters
