"""The simulated pod held to the real engine: both given the same requests, what tandem
reads from them (metrics, KV transfer parameters, usage, errors) must agree.

The simulated pods run in-process with the tiny model's tokenizer and the real pods' block
size, so token counts match too; the real pods are the session's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tandem.cluster import tiny_model
from tandem.cluster.real_engine import CPU_BLOCK_SIZE
from tandem.orchestrator.scraper import (
    CACHE_INFO,
    KV_USAGE,
    RUNNING,
    WAITING,
    WAITING_BY_REASON,
    parse_engine_metrics,
)
from tandem.simulator.config import SimPodConfig
from tests.real.conftest import REQUEST_TIMEOUT_S, RealCluster
from tests.support.pd import MODEL, complete, sse_events, words
from tests.support.servers import pod_config, running_pod

READ_BY_TANDEM = (*WAITING, *RUNNING, KV_USAGE[0], CACHE_INFO, WAITING_BY_REASON,
                  "vllm:prefix_cache_hits", "vllm:prefix_cache_queries",
                  "vllm:prompt_tokens_by_source")  # fmt: skip
"""Families the scraper, the scorers and the benchmark read (older names aside)."""


NEWER_THAN_THE_ENGINE = {"vllm:cache_config_info": {"simple_cpu_offload_num_blocks"}}
"""Labels the simulated pod has from vLLM 0.33 (CacheConfig's CPU-offload block count) that
the CPU build, 0.32, does not write yet."""


def sim_config(**overrides: Any) -> SimPodConfig:
    """A simulated pod set up as the real pods are: their tokenizer, block size and length."""
    tokenizer = tiny_model.model_dir() / "tokenizer.json"
    values = {
        "tokenizer": str(tokenizer), "block_size": CPU_BLOCK_SIZE,
        "max_model_len": tiny_model.MAX_MODEL_LEN, "time_scale": 0.05,
    }  # fmt: skip
    return pod_config(**(values | overrides))


@pytest.fixture(scope="module")
def sim_pod(real_pod: RealCluster) -> Iterator[str]:
    with running_pod(sim_config()) as url:
        yield url


@pytest.fixture(scope="module")
def sim_prefill(pd_cluster: RealCluster) -> Iterator[str]:
    with running_pod(sim_config(role="prefill", kv_role="kv_producer")) as url:
        yield url


def families(url: str) -> dict[str, set[str]]:
    """Each metric family on a pod's /metrics, with the label names of its samples."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        family.name: {label for sample in family.samples for label in sample.labels}
        for family in text_string_to_metric_families(text)
    }


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys all the way down, whether each leaf is null, and
    the shape of a list's first item."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None if value is None else "value"


@pytest.mark.parametrize("pod", ["prefill-0", "decode-0-vllm"])
def test_real_pods_expose_what_tandem_reads(pd_cluster: RealCluster, pod: str) -> None:
    url = pd_cluster.component_url(pod)
    found = families(url)
    missing = [name for name in READ_BY_TANDEM if name not in found]
    assert missing == []
    assert {"block_size", "num_gpu_blocks"} <= found[CACHE_INFO]
    metrics = parse_engine_metrics(httpx.get(f"{url}/metrics", timeout=10).text, 0.0)
    assert metrics.block_size == CPU_BLOCK_SIZE
    assert metrics.num_gpu_blocks is not None
    assert metrics.num_gpu_blocks > 0
    assert metrics.waiting_for_capacity == 0
    assert metrics.computed_prompt_tokens is not None  # the scaling signals' calibration


def test_simulated_pod_exposes_no_vllm_family_the_engine_lacks(
    real_pod: RealCluster, sim_pod: str
) -> None:
    real = families(real_pod.component_url("pod-0"))
    simulated = families(sim_pod)
    invented = sorted(n for n in simulated if n.startswith("vllm:") and n not in real)
    assert invented == []
    labels = {
        name: (simulated[name] ^ real[name]) - NEWER_THAN_THE_ENGINE.get(name, set())
        for name in simulated
        if name in real and name.startswith("vllm:")
    }
    assert {name: diff for name, diff in labels.items() if diff} == {}


def test_producer_kv_transfer_params_have_the_same_keys(
    pd_cluster: RealCluster, sim_prefill: str
) -> None:
    prompt = words(300, offset=501)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1,
            "kv_transfer_params": {"do_remote_decode": True}}  # fmt: skip
    produced = complete(pd_cluster.component_url("prefill-0"), body, timeout=REQUEST_TIMEOUT_S)
    real = produced.json()["kv_transfer_params"]
    simulated = complete(sim_prefill, body).json()["kv_transfer_params"]
    # Hand the real producer's blocks to the real decode pod, as the sidecar would, so they
    # are read (and freed) now rather than held for the lease.
    decoded = complete(
        pd_cluster.component_url("decode-0-vllm"),
        {"model": MODEL, "prompt": prompt, "max_tokens": 2, "kv_transfer_params": real},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert decoded.status_code == 200, decoded.text
    assert sorted(simulated) == sorted(real)
    assert shape(simulated) == shape(real)


REQUESTS = {
    "completion": ("/v1/completions", {"prompt": words(50, offset=3), "max_tokens": 3}),
    "completion, stream with usage": (
        "/v1/completions",
        {"prompt": words(50, offset=4), "max_tokens": 3, "stream": True,
         "stream_options": {"include_usage": True}},
    ),
    "completion, continuous usage": (
        "/v1/completions",
        {"prompt": words(50, offset=5), "max_tokens": 3, "stream": True,
         "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    ),
    "completion, two prompts": (
        "/v1/completions", {"prompt": [words(40, offset=6), words(40, offset=7)], "max_tokens": 2}
    ),
    "chat": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": words(50, offset=8)}], "max_tokens": 3},
    ),
    "chat, stream with usage": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": words(50, offset=9)}], "max_tokens": 3,
         "stream": True, "stream_options": {"include_usage": True}},
    ),
    "chat, continuous usage": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": words(50, offset=10)}], "max_tokens": 3,
         "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    ),
}  # fmt: skip


def answer_shape(url: str, route: str, body: dict[str, Any]) -> Any:
    response = complete(url, {"model": MODEL, **body}, route=route)
    assert response.status_code == 200, response.text
    if not body.get("stream"):
        return shape(response.json())
    # The engine merges the deltas of steps its output loop had not yet handed over (vLLM's
    # RequestOutputCollector), so how many alike chunks a stream has depends on timing: runs
    # of chunks of the same shape count as one.
    shapes = [shape(event) for event in sse_events(response.text)]
    return [item for index, item in enumerate(shapes) if index == 0 or item != shapes[index - 1]]


@pytest.mark.parametrize("case", list(REQUESTS))
def test_responses_have_the_same_fields(real_pod: RealCluster, sim_pod: str, case: str) -> None:
    """Every field of every response or chunk, nulls included: usage above all."""
    route, body = REQUESTS[case]
    real = answer_shape(real_pod.component_url("pod-0"), route, body)
    assert answer_shape(sim_pod, route, body) == real


BAD_REQUESTS: dict[str, tuple[str, str, Any, str]] = {
    # case: (method, route, JSON body or raw text, content type)
    "negative max_tokens": ("POST", "/v1/completions", {"prompt": "a", "max_tokens": -1}, ""),
    "temperature below 0": ("POST", "/v1/completions", {"prompt": "a", "temperature": -1}, ""),
    "top_p above 1": ("POST", "/v1/completions", {"prompt": "a", "top_p": 2}, ""),
    "presence penalty above 2": (
        "POST", "/v1/completions", {"prompt": "a", "presence_penalty": 3}, ""
    ),
    "unknown model": ("POST", "/v1/completions", {"model": "no-such-model", "prompt": "a"}, ""),
    "prompt longer than the context": (
        "POST", "/v1/completions", {"prompt": words(4200), "max_tokens": 1}, ""
    ),
    "no prompt": ("POST", "/v1/completions", {"max_tokens": 1}, ""),
    "prompt of the wrong type": ("POST", "/v1/completions", {"prompt": 12}, ""),
    "no messages": ("POST", "/v1/chat/completions", {"max_tokens": 1}, ""),
    "stream options without stream": (
        "POST", "/v1/completions", {"prompt": "a", "stream_options": {"include_usage": True}}, ""
    ),
    "body is not JSON": ("POST", "/v1/completions", "{not json", "application/json"),
    "unknown route": ("POST", "/v1/nothing-here", {"prompt": "a"}, ""),
    "wrong method": ("GET", "/v1/completions", None, ""),
}  # fmt: skip


def error_of(url: str, method: str, route: str, body: Any, content_type: str) -> Any:
    if isinstance(body, dict):
        body = {"model": MODEL, **body}
        content = httpx.Request("POST", url, json=body).content
    else:
        content = (body or "").encode()
    headers = {"content-type": content_type or "application/json"}
    response = httpx.request(method, f"{url}{route}", content=content, headers=headers, timeout=30)
    document = response.json()
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return response.status_code, document
    return response.status_code, shape(document), error["type"], error["message"], error["param"]


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_the_same_error(real_pod: RealCluster, sim_pod: str, case: str) -> None:
    real = error_of(real_pod.component_url("pod-0"), *BAD_REQUESTS[case])
    assert real[0] >= 400
    assert error_of(sim_pod, *BAD_REQUESTS[case]) == real
