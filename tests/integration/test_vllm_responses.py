"""Response shapes, ids, usage and server behaviour of a simulated pod, as vLLM 0.32 has them.

Facts from vLLM 0.32's source: vllm/entrypoints/openai/completion/serving.py and
chat_completion/serving.py (chunks, usage, echo, return_token_ids, n), serve/engine/serving.py
(`_base_request_id`), serve/utils/api_utils.py (load tracking, stream_options),
serve/middleware/x_request_id.py, serve/engine/protocol.py (ModelCard, UsageInfo) and
v1/engine/exceptions.py with launchers/launcher.py (engine death).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tandem.errors import error_body
from tests.support.servers import pod_config, running_pod, serve, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def pod_url() -> Iterator[str]:
    with running_pod(pod_config(time_scale=0.02)) as url:
        yield url


def events(url: str, route: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON events of a streamed response, [DONE] left out."""
    reply = httpx.post(f"{url}{route}", json={**body, "stream": True}, timeout=30)
    assert reply.status_code == 200, reply.text
    lines = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# -- ids ------------------------------------------------------------------------------------


def test_response_id_comes_from_the_header_then_the_body(pod_url: str) -> None:
    body = {"prompt": "hi", "max_tokens": 1, "request_id": "from-body"}
    with_header = httpx.post(
        f"{pod_url}/v1/completions", json=body, headers={"x-request-id": "from-header"}
    )
    from_body = httpx.post(f"{pod_url}/v1/completions", json=body)
    chat = httpx.post(
        f"{pod_url}/v1/chat/completions",
        json={"messages": CHAT, "max_tokens": 1, "request_id": "chat-body"},
    )
    generated = httpx.post(f"{pod_url}/v1/completions", json={"prompt": "hi", "max_tokens": 1})

    assert with_header.json()["id"] == "cmpl-from-header"
    assert from_body.json()["id"] == "cmpl-from-body"
    assert chat.json()["id"] == "chatcmpl-chat-body"
    assert len(generated.json()["id"]) == len("cmpl-") + 16


def test_request_id_header_is_echoed_only_when_enabled() -> None:
    headers = {"x-request-id": "rid-7"}
    with running_pod(pod_config(time_scale=0.02)) as url:
        plain = httpx.post(
            f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=headers
        )
    with running_pod(pod_config(time_scale=0.02, enable_request_id_headers=True)) as url:
        echoed = httpx.post(
            f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=headers
        )
        health = httpx.get(f"{url}/health")

    assert "x-request-id" not in plain.headers
    assert echoed.headers["x-request-id"] == "rid-7"
    assert len(health.headers["x-request-id"]) == 32  # a fresh uuid4 hex


def test_models_created_is_the_time_of_the_call(pod_url: str) -> None:
    time.sleep(1.1)
    before = int(time.time())
    card = httpx.get(f"{pod_url}/v1/models").json()["data"][0]

    assert card["created"] >= before
    assert card["permission"][0]["created"] >= before


# -- usage ----------------------------------------------------------------------------------


def test_completion_usage_details_carry_vllms_nulls(pod_url: str) -> None:
    reply = httpx.post(f"{pod_url}/v1/completions", json={"prompt": "hi", "max_tokens": 2})

    assert reply.json()["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 0,
        "created_cache_tokens": None,
        "multimodal_tokens": None,
    }


def test_multi_prompt_cached_tokens_are_the_last_prompts(pod_url: str) -> None:
    shared = " ".join(["alpha"] * 64)
    httpx.post(f"{pod_url}/v1/completions", json={"prompt": shared, "max_tokens": 1})
    reply = httpx.post(
        f"{pod_url}/v1/completions",
        json={"prompt": [shared, shared, "a fresh prompt"], "max_tokens": 1},
    )

    usage = reply.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0  # the third prompt's hits


def test_streamed_usage_only_when_asked_and_fingerprint_on_the_last_chunk(pod_url: str) -> None:
    plain = events(
        pod_url, "/v1/completions", {"prompt": "hi", "max_tokens": 3, "stream_options": {}}
    )
    with_usage = events(
        pod_url,
        "/v1/completions",
        {
            "prompt": "hi",
            "max_tokens": 3,
            "stream_options": {"include_usage": True},
        },
    )

    assert all("usage" not in e for e in plain)
    assert plain[-1]["choices"][0]["finish_reason"] == "length"
    assert plain[-1]["system_fingerprint"].startswith("vllm-")
    assert all("system_fingerprint" not in e for e in plain[:-1])
    assert all("kv_transfer_params" not in e for e in plain)
    assert "system_fingerprint" not in with_usage[-2]
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == {
        "prompt_tokens": 1,
        "total_tokens": 4,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_continuous_usage_per_chunk_has_no_details(pod_url: str, route: str) -> None:
    body: dict[str, Any] = {"max_tokens": 2, "ignore_eos": True}
    body |= {"prompt": "hi"} if route == "/v1/completions" else {"messages": CHAT}
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    chunks = events(pod_url, route, body)[:-1]
    chat = route == "/v1/chat/completions"
    prompt_tokens = chunks[0]["usage"]["prompt_tokens"]

    expected = [0, 1, 2] if chat else [1, 2]  # chat's role chunk comes first
    assert [c["usage"]["completion_tokens"] for c in chunks] == expected
    for chunk, completion in zip(chunks, expected, strict=True):
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion,
            "completion_tokens": completion,
        }
        if chat:
            usage["completion_tokens_details"] = None
        assert chunk["usage"] == usage
    if chat:
        assert list(chunks[0]) == [
            "id",
            "object",
            "created",
            "model",
            "choices",
            "usage",
            "prompt_token_ids",
            "prompt_text",
        ]


# -- n, several prompts, echo, return_token_ids ---------------------------------------------


def test_n_choices_each_with_its_index(pod_url: str) -> None:
    reply = httpx.post(
        f"{pod_url}/v1/completions",
        json={"prompt": ["a", "b"], "max_tokens": 2, "n": 3, "ignore_eos": True},
    )
    chat = httpx.post(
        f"{pod_url}/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2, "n": 2}
    )

    assert reply.status_code == 200, reply.text
    assert [c["index"] for c in reply.json()["choices"]] == list(range(6))
    assert reply.json()["usage"]["prompt_tokens"] == 2  # each prompt counted once
    assert reply.json()["usage"]["completion_tokens"] == 12
    assert [c["index"] for c in chat.json()["choices"]] == [0, 1]


def test_several_prompts_stream_with_their_indexes(pod_url: str) -> None:
    chunks = events(
        pod_url,
        "/v1/completions",
        {"prompt": ["a", "b c"], "max_tokens": 2, "n": 2, "ignore_eos": True},
    )
    finished = {
        c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"] == "length"
    }

    assert finished == {0, 1, 2, 3}
    assert len(chunks) == 8


def test_echo_and_return_token_ids(pod_url: str) -> None:
    echo = httpx.post(
        f"{pod_url}/v1/completions", json={"prompt": "hello there", "max_tokens": 2, "echo": True}
    )
    tokens = httpx.post(
        f"{pod_url}/v1/completions",
        json={"prompt": [5, 6, 7], "max_tokens": 2, "return_token_ids": True},
    )
    echo_only = httpx.post(
        f"{pod_url}/v1/completions", json={"prompt": "hello there", "max_tokens": 0, "echo": True}
    )
    streamed = events(
        pod_url,
        "/v1/completions",
        {"prompt": "hello there", "max_tokens": 2, "echo": True, "ignore_eos": True},
    )

    choice = echo.json()["choices"][0]
    assert choice["text"].startswith("hello there")
    assert len(choice["text"]) > len("hello there")
    tokens_choice = tokens.json()["choices"][0]
    assert tokens_choice["prompt_token_ids"] == [5, 6, 7]
    assert len(tokens_choice["token_ids"]) == 2
    assert echo_only.json()["choices"][0]["text"] == "hello there"
    assert streamed[0]["choices"][0]["text"].startswith("hello there")
    assert not streamed[1]["choices"][0]["text"].startswith("hello there")


# -- load tracking and engine death ---------------------------------------------------------


def test_load_counts_a_stream_until_its_body_ends() -> None:
    sampling = {"max_tokens": 400, "ignore_eos": True}
    with running_pod(pod_config(time_scale=1.0)) as url, ThreadPoolExecutor(2) as pool:

        def load() -> int:
            value: int = httpx.get(f"{url}/load", timeout=10).json()["server_load"]
            return value

        def stream() -> None:
            with (
                httpx.Client(timeout=30) as client,
                client.stream(
                    "POST",
                    f"{url}/v1/completions",
                    json={"prompt": "s", "stream": True, **sampling},
                ) as response,
            ):
                for _ in response.iter_lines():
                    pass

        streaming = pool.submit(stream)
        plain = pool.submit(
            lambda: httpx.post(
                f"{url}/v1/completions", json={"prompt": "p", **sampling}, timeout=30
            )
        )
        both_counted = wait_until(lambda: load() == 2, timeout_s=10)
        streaming.result(timeout=60)
        plain.result(timeout=60)
        released = wait_until(lambda: load() == 0, timeout_s=10)

    assert both_counted
    assert released


def test_a_dead_engine_fails_requests_with_500_and_stops_the_server() -> None:
    from tandem.simulator.server import create_app

    stopped: list[bool] = []
    config = pod_config(time_scale=1.0)
    app = create_app(config, shutdown=lambda: stopped.append(True))
    with serve(app, config.port) as url, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(
            lambda: httpx.post(
                f"{url}/v1/completions",
                json={"prompt": "long", "max_tokens": 2000, "ignore_eos": True},
                timeout=30,
            )
        )
        assert wait_until(lambda: app.state.pod.runner.engine.num_running == 1)

        def broken_step(now: float) -> None:
            raise RuntimeError("device lost")

        app.state.pod.runner.engine.step = broken_step
        reply = in_flight.result(timeout=30)
        later = httpx.post(f"{url}/v1/completions", json={"prompt": "hi"}, timeout=10)
        health = httpx.get(f"{url}/health", timeout=10)

    dead = error_body(
        500,
        "EngineCore encountered an issue. See stack trace (above) for the root cause.",
        type="InternalServerError",
    )
    assert (reply.status_code, reply.json()) == (500, dead)
    assert (later.status_code, later.json()) == (500, dead)
    assert (health.status_code, health.content) == (503, b"")
    assert stopped == [True]
