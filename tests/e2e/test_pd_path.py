"""The whole P/D path on loopback with the official `openai` client: client → orchestrator
gateway → sidecar → prefill pod (remote prefill) → decode pod (KV over NIXL, decode)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tandem.orchestrator.app import create_app
from tandem.orchestrator.config import parse_orchestrator_config
from tests.support.pd import (
    BY_SOURCE,
    MODEL,
    PDStack,
    delta,
    pd_stack,
    samples,
    sse_events,
    words,
)
from tests.support.schedulers import disaggregating_tandem
from tests.support.servers import free_port, pod_config, running_pod, serve, wait_until

REQUESTS = "tandem_sidecar_requests_total"
EXTERNAL = f"{BY_SOURCE}{{source=external_kv_transfer}}"
LOCAL = f"{BY_SOURCE}{{source=local_compute}}"


@dataclass(frozen=True, slots=True)
class Cluster:
    gateway_url: str
    pd: PDStack
    single_url: str
    """An aggregated simulated pod outside the cluster: what a single vLLM answers."""
    client: OpenAI

    def samples(self) -> tuple[dict[str, float], dict[str, float]]:
        """(sidecar's /metrics, decode pod's /metrics)."""
        return samples(self.pd.sidecar_url), samples(self.pd.decode_url)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    single = pod_config(time_scale=0.05)
    with ExitStack() as stack:
        single_url = stack.enter_context(running_pod(single))
        pd = stack.enter_context(pd_stack())
        port = free_port()
        sidecar_port = int(pd.sidecar_url.rsplit(":", 1)[1])
        config = parse_orchestrator_config(
            {
                "endpoints": [
                    {"name": "prefill-0", "host": "127.0.0.1", "port": pd.prefill.port,
                     "role": "prefill"},
                    {"name": "decode-0", "host": "127.0.0.1", "port": sidecar_port,
                     "role": "decode"},
                ],
                "gateway": {"port": port},
                "scrape": {"interval_s": 0.1},
                "scheduler": disaggregating_tandem(),
                "seed": 7,
            }
        )  # fmt: skip
        url = stack.enter_context(serve(create_app(config), port))
        assert wait_until(lambda: healthy(url) == 2)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        yield Cluster(url, pd, single_url, client)
        client.close()


def healthy(url: str) -> int:
    count: int = httpx.get(f"{url}/ready", timeout=5, verify=False).json()["healthy"]
    return count


def create(
    client: OpenAI, route: str, prompt: str, stream: bool, max_tokens: int = 6
) -> tuple[int, int, int]:
    """(prompt_tokens, completion_tokens, cached_tokens) of one request through the gateway."""
    if route == "chat":
        messages: Any = [{"role": "user", "content": prompt}]
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=max_tokens, stream=True,
                    stream_options={"include_usage": True},
                )
            )  # fmt: skip
            assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == max_tokens
            usage = chunks[-1].usage
        else:
            chat = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=max_tokens
            )
            assert chat.choices[0].message.content
            assert chat.choices[0].finish_reason == "length"
            usage = chat.usage
    elif stream:
        events = list(
            client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        assert sum(1 for e in events if e.choices and e.choices[0].text) == max_tokens
        usage = events[-1].usage
    else:
        completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens)
        assert completion.choices[0].finish_reason == "length"
        usage = completion.usage
    assert usage is not None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
    return usage.prompt_tokens, usage.completion_tokens, cached or 0


CASES = [
    pytest.param("completions", False, id="completions"),
    pytest.param("completions", True, id="completions-stream"),
    pytest.param("chat", False, id="chat"),
    pytest.param("chat", True, id="chat-stream"),
]


@pytest.mark.parametrize(("route", "stream"), CASES)
def test_a_long_uncached_prompt_is_disaggregated(
    cluster: Cluster, route: str, stream: bool
) -> None:
    offset = 500 + 20 * (route == "chat") + 10 * stream  # a prompt no other case sent
    before = cluster.samples()
    prompt_tokens, completion_tokens, cached = create(
        cluster.client, route, words(3000, offset), stream
    )
    after = cluster.samples()

    assert completion_tokens == 6
    assert cached == 0  # nothing of this prompt was cached anywhere
    assert prompt_tokens >= 3000
    assert delta(before[0], after[0], f"{REQUESTS}{{mode=disaggregated}}") == 1
    assert delta(before[1], after[1], EXTERNAL) == prompt_tokens
    assert delta(before[1], after[1], LOCAL) == 0


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_a_short_prompt_is_served_locally(cluster: Cluster, route: str) -> None:
    before = cluster.samples()
    prompt_tokens, completion_tokens, _ = create(
        cluster.client, route, f"a short {route} prompt", stream=False
    )
    after = cluster.samples()

    assert completion_tokens == 6
    assert delta(before[0], after[0], f"{REQUESTS}{{mode=local}}") == 1
    assert delta(before[0], after[0], f"{REQUESTS}{{mode=disaggregated}}") == 0
    assert delta(before[1], after[1], LOCAL) == prompt_tokens
    assert delta(before[1], after[1], EXTERNAL) == 0


def shape(reply: httpx.Response, stream: bool) -> tuple[frozenset[str], frozenset[str]]:
    """The top-level keys and the choice keys of a response (of every event, for a stream)."""
    assert reply.status_code == 200, reply.text
    bodies = sse_events(reply.text) if stream else [reply.json()]
    top = frozenset(key for body in bodies for key in body)
    choice = frozenset(key for body in bodies for c in body["choices"] for key in c)
    return top, choice


@pytest.mark.parametrize(("route", "stream"), CASES)
def test_a_disaggregated_response_has_the_shape_of_a_single_pods(
    cluster: Cluster, route: str, stream: bool
) -> None:
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    offset = 700 + 20 * (route == "chat") + 10 * stream
    prompt = words(3000, offset)
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 3, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if route == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    before = cluster.samples()
    through = httpx.post(f"{cluster.gateway_url}{path}", json=body, timeout=30, verify=False)
    after = cluster.samples()
    single = httpx.post(f"{cluster.single_url}{path}", json=body, timeout=30, verify=False)

    assert delta(before[0], after[0], f"{REQUESTS}{{mode=disaggregated}}") == 1
    assert shape(through, stream) == shape(single, stream)
