"""The routing sidecar on loopback: pass-through without a prefill target, and the P/D path
(remote prefill, KV handoff, local decode) with simulated pods and recording fakes.

The pods and sidecars are shared by the module; tests use prompts of their own and assert on
how counters grew, so their order does not matter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tandem.sidecar.prefill import REMOTE_DECODE_PARAMS
from tests.support.pd import (
    BY_SOURCE,
    MODEL,
    PREFILLER,
    FakePD,
    PDStack,
    address,
    complete,
    counter,
    decode_config,
    delta,
    fake_pd,
    pd_stack,
    prefill_config,
    producer_params,
    samples,
    sidecar,
    sse_events,
    words,
)
from tests.support.servers import free_port, running_pod, wait_until

KV_BYTES_PER_TOKEN = 131072  # Llama-3.1-8B: 2 x 32 layers x 8 KV heads x 128 x 2 bytes
REQUESTS = "tandem_sidecar_requests_total"
ROUTES = ["/v1/completions", "/v1/chat/completions"]


@dataclass(frozen=True, slots=True)
class Ranked:
    """The shared P/D stack, plus a prefill pod that always answers 503 and a port where
    nothing listens, both in the sidecar's allowlist."""

    pd: PDStack
    failing: int
    down: int


@pytest.fixture(scope="module")
def ranked() -> Iterator[Ranked]:
    failing = prefill_config(faults={"error_rate": 1.0, "error_codes": (503,)})
    down = free_port()
    with running_pod(failing), pd_stack(also_allowed=(failing.port, down)) as pd:
        yield Ranked(pd, failing.port, down)


@pytest.fixture(scope="module")
def pd(ranked: Ranked) -> PDStack:
    return ranked.pd


@dataclass(frozen=True, slots=True)
class Fakes:
    fakes: FakePD
    plain: str
    """A sidecar over the fakes, cached tokens as vLLM reports them."""
    rewriting: str
    """A sidecar over the fakes with rewrite_cached_tokens."""


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    params = producer_params(free_port(), cached_tokens=992)
    with ExitStack() as stack:
        fake = stack.enter_context(fake_pd(params, vllm_cached_tokens=5))
        allowed = (fake.prefill_port,)
        plain = stack.enter_context(sidecar(fake.vllm_port, allowed))
        rewriting = stack.enter_context(
            sidecar(fake.vllm_port, allowed, rewrite_cached_tokens=True)
        )
        yield Fakes(fake, plain, rewriting)


@pytest.fixture
def fake(fakes: Fakes) -> Fakes:
    fakes.fakes.clear()
    return fakes


def body_for(route: str, prompt: str, **sampling: Any) -> dict[str, Any]:
    if route == "/v1/chat/completions":
        return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **sampling}
    return {"model": MODEL, "prompt": prompt, **sampling}


def usage_of(reply: httpx.Response, stream: bool) -> dict[str, Any]:
    usage: dict[str, Any] = sse_events(reply.text)[-1]["usage"] if stream else reply.json()["usage"]
    return usage


# -- pass-through -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_without_a_prefill_target_the_request_reaches_vllm_unchanged(
    fake: Fakes, stream: bool
) -> None:
    body = {
        "model": MODEL,
        "prompt": "unchanged",
        "max_tokens": 2,
        "stream": stream,
        "kv_transfer_params": None,
        "min_tokens": 1,
    }
    before = samples(fake.plain)
    direct = complete(f"http://{address(fake.fakes.vllm_port)}", body)
    reply = complete(fake.plain, body, request_id="rid-pass")
    after = samples(fake.plain)

    assert reply.status_code == 200
    assert reply.content == direct.content  # relayed byte for byte, usage untouched
    assert fake.fakes.vllm.bodies == [body, body]
    assert fake.fakes.vllm.headers[-1]["x-request-id"] == "rid-pass"
    assert PREFILLER not in fake.fakes.vllm.headers[-1]
    assert fake.fakes.prefill.bodies == []
    assert reply.headers["x-request-id"] == "rid-pass"
    assert delta(before, after, f"{REQUESTS}{{mode=local}}") == 1
    assert delta(before, after, f"{REQUESTS}{{mode=disaggregated}}") == 0


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_without_a_prefill_target_the_local_pod_prefills(
    pd: PDStack, route: str, stream: bool
) -> None:
    body = body_for(route, words(300, offset=len(route) + stream), max_tokens=6, stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    before = samples(pd.decode_url)
    reply = complete(pd.sidecar_url, body, route=route)
    after = samples(pd.decode_url)

    assert reply.status_code == 200, reply.text
    usage = usage_of(reply, stream)
    assert usage["completion_tokens"] == 6
    assert delta(before, after, f"{BY_SOURCE}{{source=local_compute}}") == usage["prompt_tokens"]
    assert delta(before, after, f"{BY_SOURCE}{{source=external_kv_transfer}}") == 0


def test_a_stream_is_relayed_while_the_pod_generates_and_closing_it_aborts() -> None:
    decode = decode_config(time_scale=1.0)
    body = {"model": MODEL, "prompt": "go on", "max_tokens": 2000, "ignore_eos": True}
    with (
        running_pod(decode) as decode_url,
        sidecar(decode.port) as url,
        httpx.Client(timeout=10) as client,
    ):
        with client.stream("POST", f"{url}/v1/completions", json=body | {"stream": True}) as r:
            lines = r.iter_lines()  # keep it referenced: dropping it closes the connection
            events = [line for line in (next(lines) for _ in range(6)) if line.startswith("data")]
            # Events reach the client while the pod is still generating: not buffered.
            while_streaming = samples(decode_url)
        aborted = "vllm:request_success_total{finished_reason=abort}"
        assert wait_until(lambda: samples(decode_url)[aborted] == 1)
        after = samples(decode_url)

    assert len(events) >= 3
    assert "data: [DONE]" not in events
    assert while_streaming["vllm:num_requests_running{}"] == 1
    assert after["vllm:num_requests_running{}"] == 0
    assert after["vllm:kv_cache_usage_perc{}"] == 0


@pytest.mark.parametrize(
    ("method", "route", "body"),
    [
        ("GET", "/health", None),
        ("GET", "/version", None),
        ("GET", "/v1/models", None),
        ("POST", "/tokenize", {"model": MODEL, "prompt": " alpha beta gamma"}),
    ],
)
def test_other_routes_are_proxied_to_the_local_vllm(
    pd: PDStack, method: str, route: str, body: dict[str, Any] | None
) -> None:
    direct = httpx.request(method, f"{pd.decode_url}{route}", json=body, timeout=10, verify=False)
    reply = httpx.request(method, f"{pd.sidecar_url}{route}", json=body, timeout=10, verify=False)

    assert reply.status_code == direct.status_code == 200
    if route == "/v1/models":  # the permission id is fresh on every call
        assert [m["id"] for m in reply.json()["data"]] == [MODEL]
        assert reply.json()["data"][0].keys() == direct.json()["data"][0].keys()
    else:
        assert reply.content == direct.content


@pytest.mark.parametrize("route", ["/health", "/v1/completions"])
def test_a_relayed_response_has_one_date_and_one_server_header(pd: PDStack, route: str) -> None:
    if route == "/health":
        reply = httpx.get(f"{pd.sidecar_url}{route}", timeout=10, verify=False)
    else:
        reply = complete(pd.sidecar_url, {"model": MODEL, "prompt": "x", "max_tokens": 1})

    assert reply.status_code == 200
    assert len(reply.headers.get_list("date")) == 1
    assert len(reply.headers.get_list("server")) == 1


def test_metrics_carry_vllms_and_the_sidecars_own(pd: PDStack) -> None:
    before = samples(pd.sidecar_url)
    complete(pd.sidecar_url, {"model": MODEL, "prompt": "count me", "max_tokens": 1})
    text = httpx.get(f"{pd.sidecar_url}/metrics", timeout=10, verify=False).text
    after = samples(pd.sidecar_url)  # parses as one exposition

    lines = text.splitlines()
    assert any(line.startswith("vllm:num_requests_running{") for line in lines)
    assert any(line.startswith("tandem_sidecar_") for line in lines)
    assert delta(before, after, "vllm:request_success_total{finished_reason=length}") == 1
    assert delta(before, after, f"{REQUESTS}{{mode=local}}") == 1
    assert "tandem_sidecar_orphaned_prefills_total{}" in after


# -- the P/D path with simulated pods ---------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_remote_prefill_hands_the_whole_prompt_to_the_decode_pod(
    pd: PDStack, route: str, stream: bool
) -> None:
    body = body_for(route, words(1000, offset=100 + len(route) + stream), max_tokens=8)
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    before = [samples(url) for url in (pd.decode_url, pd.prefill_url, pd.sidecar_url)]
    reply = complete(pd.sidecar_url, body, pd.prefill_address, route, request_id=f"rid-{stream}")
    released = wait_until(lambda: samples(pd.prefill_url)["vllm:kv_cache_usage_perc{}"] == 0)
    decode, prefill, sidecar_after = (
        samples(url) for url in (pd.decode_url, pd.prefill_url, pd.sidecar_url)
    )

    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == f"rid-{stream}"
    usage = usage_of(reply, stream)
    prompt_tokens = usage["prompt_tokens"]
    assert usage["completion_tokens"] == 8
    assert prompt_tokens >= 1000
    # The decode pod computed nothing of the prompt: all of it came over NIXL.
    external = f"{BY_SOURCE}{{source=external_kv_transfer}}"
    assert delta(before[0], decode, external) == prompt_tokens
    assert delta(before[0], decode, f"{BY_SOURCE}{{source=local_compute}}") == 0
    nixl_bytes = delta(before[0], decode, "vllm:nixl_bytes_transferred_sum{}")
    assert nixl_bytes == prompt_tokens * KV_BYTES_PER_TOKEN
    # The prefill pod ran the prompt once, for one token, and freed it when the decode read it.
    assert delta(before[1], prefill, f"{BY_SOURCE}{{source=local_compute}}") == prompt_tokens
    assert delta(before[1], prefill, "vllm:generation_tokens_total{}") == 1
    assert released
    assert delta(before[1], prefill, "vllm:nixl_num_kv_expired_reqs_total{}") == 0
    assert delta(before[2], sidecar_after, f"{REQUESTS}{{mode=disaggregated}}") == 1
    assert delta(before[2], sidecar_after, "tandem_sidecar_prefill_duration_seconds_count{}") == 1
    assert delta(before[2], sidecar_after, "tandem_sidecar_kv_handoff_seconds_count{}") == 1
    assert delta(before[2], sidecar_after, "tandem_sidecar_orphaned_prefills_total{}") == 0
    assert delta(before[2], sidecar_after, f"{REQUESTS}{{mode=fallback}}") == 0


PREFILL_CASES = [
    pytest.param(
        "/v1/completions",
        {
            "model": MODEL,
            "prompt": "the prompt",
            "max_tokens": 50,
            "min_tokens": 10,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.5,
        },
        {
            "model": MODEL,
            "prompt": "the prompt",
            "max_tokens": 1,
            "stream": False,
            "temperature": 0.5,
            "kv_transfer_params": REMOTE_DECODE_PARAMS,
        },
        id="completions-stream",
    ),
    pytest.param(
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 50,
            "min_tokens": 3,
        },
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 1,
            "max_tokens": 1,
            "stream": False,
            "kv_transfer_params": REMOTE_DECODE_PARAMS,
        },
        id="chat-max-completion-tokens",
    ),
]


@pytest.mark.parametrize(("route", "body", "expected_prefill"), PREFILL_CASES)
def test_prefill_request_is_what_the_nixl_connector_expects(
    fake: Fakes, route: str, body: dict[str, Any], expected_prefill: dict[str, Any]
) -> None:
    prefill, vllm = fake.fakes.prefill, fake.fakes.vllm
    target = address(fake.fakes.prefill_port)
    headers = {PREFILLER: target, "x-request-id": "rid-nixl", "x-tenant": "t1"}
    reply = httpx.post(f"{fake.plain}{route}", json=body, headers=headers, timeout=10, verify=False)

    assert reply.status_code == 200, reply.text
    assert prefill.bodies == [expected_prefill]
    assert expected_prefill["kv_transfer_params"]["do_remote_decode"] is True
    assert prefill.headers[0]["x-request-id"] == "rid-nixl"
    assert prefill.headers[0]["x-tenant"] == "t1"
    assert PREFILLER not in prefill.headers[0]
    # The decode leg is the client's request plus the producer's params, same request id.
    assert vllm.bodies == [body | {"kv_transfer_params": fake.fakes.params}]
    assert vllm.headers[0]["x-request-id"] == "rid-nixl"
    assert PREFILLER not in vllm.headers[0]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_client_sees_the_prefill_sides_cached_tokens(pd: PDStack, stream: bool) -> None:
    """The prompt goes to the prefill pod twice (once directly, to warm its prefix cache, then
    through the sidecar): the client's cached tokens are the producer's hits, although the
    decode pod has never seen the prompt."""
    body = {"model": MODEL, "prompt": words(1000, offset=300 + stream), "max_tokens": 4}
    warm = complete(pd.prefill_url, body)
    assert warm.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    before = [samples(pd.prefill_url), samples(pd.decode_url)]
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    reply = complete(pd.sidecar_url, body, pd.prefill_address)
    after = [samples(pd.prefill_url), samples(pd.decode_url)]

    assert reply.status_code == 200, reply.text
    producer_hits = delta(before[0], after[0], "vllm:prefix_cache_hits_total{}")
    assert producer_hits == 992  # 62 full 16-token blocks of the 1000-token prompt
    assert usage_of(reply, stream)["prompt_tokens_details"]["cached_tokens"] == producer_hits
    assert delta(before[1], after[1], f"{BY_SOURCE}{{source=local_cache_hit}}") == 0
    assert delta(before[1], after[1], f"{BY_SOURCE}{{source=external_kv_transfer}}") == 1000


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(("rewrite", "expected"), [(False, 5), (True, 992)])
def test_rewrite_cached_tokens_reports_the_producers_count(
    fake: Fakes, stream: bool, rewrite: bool, expected: int
) -> None:
    """The fake vLLM reports 5 cached tokens, the fake producer 992."""
    url = fake.rewriting if rewrite else fake.plain
    body = {"model": MODEL, "prompt": "p", "max_tokens": 2, "stream": stream}
    reply = complete(url, body, address(fake.fakes.prefill_port))

    assert reply.status_code == 200
    usage = usage_of(reply, stream)
    assert usage["prompt_tokens_details"]["cached_tokens"] == expected
    assert usage["completion_tokens"] == 2
    assert len(fake.fakes.vllm.bodies) == 1


@pytest.mark.parametrize(
    ("first_is", "reason"),
    [("down", "prefill_unreachable"), ("failing", "prefill_5xx")],
)
def test_a_ranked_list_moves_past_a_failing_candidate(
    ranked: Ranked, first_is: str, reason: str
) -> None:
    pd = ranked.pd
    first = ranked.down if first_is == "down" else ranked.failing
    header = f"{address(first)},{pd.prefill_address}"
    body = {"model": MODEL, "prompt": words(500, offset=400 + len(first_is)), "max_tokens": 4}
    before = [samples(pd.sidecar_url), samples(pd.decode_url)]
    reply = complete(pd.sidecar_url, body, header)
    after = [samples(pd.sidecar_url), samples(pd.decode_url)]

    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 4
    retries = f"tandem_sidecar_prefill_retries_total{{reason={reason}}}"
    assert delta(before[0], after[0], retries) == 1
    assert delta(before[0], after[0], f"{REQUESTS}{{mode=disaggregated}}") == 1
    assert delta(before[0], after[0], f"{REQUESTS}{{mode=fallback}}") == 0
    assert delta(before[1], after[1], f"{BY_SOURCE}{{source=external_kv_transfer}}") == 500
    assert delta(before[1], after[1], f"{BY_SOURCE}{{source=local_compute}}") == 0
    assert counter(after[0], "tandem_sidecar_fallbacks_total{reason=prefill_5xx}") == 0
