"""A client that goes away mid-generation frees its slot and its KV blocks on the pod."""

from __future__ import annotations

import httpx
import pytest

from tests.support.servers import pod_config, running_pod, scrape, wait_until


def long_generation(max_tokens: int) -> list[tuple[str, dict[str, object]]]:
    """(route, body) of a completion and a chat that run to `max_tokens` unless stopped."""
    sampling = {"max_tokens": max_tokens, "ignore_eos": True}
    return [
        ("/v1/completions", {"prompt": "tell me everything", **sampling}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "tell me everything"}], **sampling},
        ),
    ]


def aborted_and_freed(url: str) -> bool:
    samples = scrape(url)
    return (
        samples["vllm:num_requests_running{}"] == 0
        and samples["vllm:num_requests_waiting{}"] == 0
        and samples["vllm:kv_cache_usage_perc{}"] == 0
        and samples["vllm:request_success_total{finished_reason=abort}"] == 1
    )


@pytest.mark.parametrize(("route", "body"), long_generation(2000), ids=["completions", "chat"])
def test_closing_a_stream_aborts_the_request(route: str, body: dict[str, object]) -> None:
    with running_pod(pod_config(time_scale=1.0)) as url:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", f"{url}{route}", json={**body, "stream": True}) as response,
        ):
            assert response.status_code == 200
            # Keep the line iterator referenced: dropping it closes the connection early.
            lines = response.iter_lines()
            events: list[str] = []
            while len(events) < 3:
                line = next(lines)
                if line.startswith("data: "):
                    events.append(line)
            while_streaming = scrape(url)

        freed = wait_until(lambda: aborted_and_freed(url), timeout_s=10)
        samples = scrape(url)
        load = httpx.get(f"{url}/load", timeout=10).json()["server_load"]

    assert "data: [DONE]" not in events
    assert while_streaming["vllm:num_requests_running{}"] == 1
    assert while_streaming["vllm:kv_cache_usage_perc{}"] > 0
    assert freed, samples
    assert samples["vllm:request_success_total{finished_reason=length}"] == 0
    assert load == 0


@pytest.mark.parametrize(("route", "body"), long_generation(500), ids=["completions", "chat"])
def test_client_timeout_aborts_a_non_streaming_request(route: str, body: dict[str, object]) -> None:
    # 500 tokens at five times the modelled step time take seconds; the client waits 0.3 s.
    with running_pod(pod_config(time_scale=5.0)) as url:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=0.3)) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            client.post(f"{url}{route}", json=body)

        freed = wait_until(lambda: aborted_and_freed(url), timeout_s=10)
        samples = scrape(url)
        load = httpx.get(f"{url}/load", timeout=10).json()["server_load"]

    assert freed, samples
    assert samples["vllm:request_success_total{finished_reason=length}"] == 0
    assert load == 0
