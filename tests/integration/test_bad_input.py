"""Bad requests get vLLM's status and error shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.servers import pod_config, running_pod

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MAX_MODEL_LEN = 4096


@pytest.fixture(scope="module")
def pod_url() -> Iterator[str]:
    with running_pod(pod_config(max_model_len=MAX_MODEL_LEN, time_scale=0.05)) as url:
        yield url


def long_text(num_tokens: int) -> str:
    return " x" * num_tokens


# (route, body, status, error type, param, start of the message) — statuses, types, params
# and messages as vLLM 0.33 answers them (vllm-project/vllm: vllm/renderers/params.py,
# vllm/sampling_params.py, vllm/entrypoints/serve/exception_handling/).
CASES: list[tuple[str, dict[str, Any], int, str, str | None, str]] = [
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": "abc"}, 400,
     "Bad Request", "body.max_tokens", "1 validation error:\n  {'type': 'int_parsing'"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1.5}, 400,
     "Bad Request", "body.max_tokens", "1 validation error:"),
    ("/v1/completions", {"model": MODEL, "prompt": {"a": 1}}, 400,
     "Bad Request", "body.prompt", "4 validation errors:\n  {'type': 'list_type', 'loc': "
     "'body.prompt'"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -1}, 400,
     "BadRequestError", "max_tokens",
     "max_tokens must be at least 1, got -1. (parameter=max_tokens, value=-1)"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400,
     "BadRequestError", "max_tokens", "max_tokens must be at least 1, got 0."),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "BadRequestError", "prompt",
     "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)"),
    ("/v1/completions", {"model": MODEL}, 400, "BadRequestError", "prompt",
     "Either prompt or prompt_embeds must be provided and non-empty."),
    ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}, 404, "NotFoundError", "model",
     f"The model `gpt-4` does not exist. Valid aliases: {MODEL}."),
    ("/v1/completions", {"model": MODEL, "prompt": long_text(MAX_MODEL_LEN + 10)}, 400,
     "BadRequestError", "input_tokens",
     f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, your prompt "
     f"contains at least {MAX_MODEL_LEN + 1} input tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": [1] * (MAX_MODEL_LEN + 5)}, 400,
     "BadRequestError", "input_tokens",
     f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, your prompt "
     f"contains {MAX_MODEL_LEN + 5} input tokens"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": MAX_MODEL_LEN + 1}, 400,
     "BadRequestError", "max_tokens",
     f"max_tokens={MAX_MODEL_LEN + 1} cannot be greater than max_model_len={MAX_MODEL_LEN}."),
    # vLLM raises the min_tokens checks without naming the parameter: no param, no suffix.
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "min_tokens": 20, "max_tokens": 5},
     400, "BadRequestError", None,
     "min_tokens must be less than or equal to max_tokens=5, got 20."),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "min_tokens": -1}, 400,
     "BadRequestError", None, "min_tokens must be greater than or equal to 0, got -1."),
    ("/v1/completions",
     {"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}}, 400,
     "BadRequestError", "stream_options",
     "Stream options can only be defined when `stream=True`. (parameter=stream_options)"),
    ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, 400,
     "Bad Request", "body.messages", "1 validation error:"),
    ("/v1/chat/completions", {"model": MODEL}, 400,
     "Bad Request", "body.messages", "1 validation error:\n  {'type': 'missing'"),
    ("/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
      "max_completion_tokens": MAX_MODEL_LEN * 2}, 400, "BadRequestError",
     "max_completion_tokens",
     f"max_completion_tokens={MAX_MODEL_LEN * 2} cannot be greater than max_model_len"),
    ("/v1/chat/completions",
     {"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "NotFoundError", "model", "The model `other` does not exist."),
]  # fmt: skip

# Sampling parameters out of range, with vLLM 0.32's messages
# (vllm/sampling_params.py `_verify_args`, the protocols' `check_logprobs`); a check vLLM raises
# without a parameter has param None and no "(parameter=...)" suffix.
HI = {"model": MODEL, "prompt": "hi"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
SAMPLING_CASES: list[tuple[str, dict[str, Any], str | None, str]] = [
    ("/v1/completions", {**HI, "temperature": -0.5}, "temperature",
     "temperature must be non-negative, got -0.5. (parameter=temperature, value=-0.5)"),
    ("/v1/completions", {**HI, "temperature": 2.5}, "temperature",
     "temperature must be in [0, 2], got 2.5. (parameter=temperature, value=2.5)"),
    ("/v1/completions", {**HI, "top_p": 0}, "top_p",
     "top_p must be in (0, 1], got 0.0. (parameter=top_p, value=0.0)"),
    ("/v1/completions", {**HI, "top_p": 1.5}, "top_p",
     "top_p must be in (0, 1], got 1.5. (parameter=top_p, value=1.5)"),
    ("/v1/completions", {**HI, "top_k": -2}, None,
     "top_k must be 0 (disable), or at least 1, got -2."),
    ("/v1/completions", {**HI, "presence_penalty": 2.5}, None,
     "presence_penalty must be in [-2, 2], got 2.5."),
    ("/v1/completions", {**HI, "frequency_penalty": -3}, None,
     "frequency_penalty must be in [-2, 2], got -3.0."),
    ("/v1/completions", {**HI, "repetition_penalty": 0}, None,
     "repetition_penalty must be greater than zero, got 0.0."),
    ("/v1/completions", {**HI, "min_p": 1.5}, None, "min_p must be in [0, 1], got 1.5."),
    ("/v1/completions", {**HI, "n": 0}, None, "n must be at least 1, got 0."),
    ("/v1/completions", {**HI, "n": 2, "temperature": 0}, None,
     "n must be 1 when using greedy sampling, got 2."),
    ("/v1/completions", {**HI, "logprobs": -2}, "logprobs",
     "`logprobs` must be a positive value or -1. (parameter=logprobs, value=-2)"),
    ("/v1/completions", {**HI, "logprobs": 21}, "logprobs",
     "Requested sample logprobs of 21, which is greater than max allowed: 20 "
     "(parameter=logprobs, value=21)"),
    ("/v1/chat/completions", {**CHAT, "temperature": -1}, "temperature",
     "temperature must be non-negative, got -1.0."),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 3}, "top_logprobs",
     "when using `top_logprobs`, `logprobs` must be set to true. (parameter=top_logprobs)"),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": -3}, "top_logprobs",
     "`top_logprobs` must be a positive value or -1. (parameter=top_logprobs, value=-3)"),
]  # fmt: skip


@pytest.mark.parametrize(("route", "body", "param", "message"), SAMPLING_CASES)
def test_out_of_range_sampling_parameters_are_refused(
    pod_url: str, route: str, body: dict[str, Any], param: str | None, message: str
) -> None:
    reply = httpx.post(f"{pod_url}{route}", json=body, timeout=30)

    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", param, 400)
    assert error["message"].startswith(message), error["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("GET", "/v1/nothing", 404, "Not Found"),
        ("GET", "/v1/completions", 405, "Method Not Allowed"),
        ("DELETE", "/health", 405, "Method Not Allowed"),
    ],
)
def test_unknown_route_and_wrong_method_get_fastapis_detail(
    pod_url: str, method: str, path: str, status: int, detail: str
) -> None:
    reply = httpx.request(method, f"{pod_url}{path}", timeout=10)

    assert reply.status_code == status
    assert reply.json() == {"detail": detail}


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_a_body_that_is_not_json_is_refused(pod_url: str, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    reply = httpx.post(
        f"{pod_url}/v1/completions",
        content=b'{"prompt": "hi"}',
        headers=headers,
        timeout=10,
    )

    assert reply.status_code == 400
    assert reply.json() == {
        "error": {
            "message": "1 validation error:\n  Unsupported Media Type: Only 'application/json' "
            "is allowed",
            "type": "Bad Request",
            "param": None,
            "code": 400,
        }
    }


def test_empty_stream_options_without_stream_are_accepted(pod_url: str) -> None:
    reply = httpx.post(
        f"{pod_url}/v1/completions", json={**HI, "max_tokens": 2, "stream_options": {}}, timeout=10
    )

    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(("route", "body", "status", "kind", "param", "message"), CASES)
def test_bad_request_gets_vllms_error(
    pod_url: str,
    route: str,
    body: dict[str, Any],
    status: int,
    kind: str,
    param: str | None,
    message: str,
) -> None:
    reply = httpx.post(f"{pod_url}{route}", json=body, timeout=30)

    assert reply.status_code == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert error["type"] == kind
    assert error["param"] == param
    assert error["message"].startswith(message), error["message"]


def test_malformed_json_is_a_400(pod_url: str) -> None:
    reply = httpx.post(
        f"{pod_url}/v1/completions",
        content=b"{bad",
        headers={"content-type": "application/json"},
        timeout=10,
    )

    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "Bad Request"
    assert "JSON decode error" in error["message"]
    assert error["param"] == "body.1"


def test_max_tokens_past_the_context_is_clamped(pod_url: str) -> None:
    prompt = long_text(MAX_MODEL_LEN - 10)
    reply = httpx.post(
        f"{pod_url}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": 100, "ignore_eos": True},
        timeout=60,
    )

    assert reply.status_code == 200
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == MAX_MODEL_LEN
    assert reply.json()["choices"][0]["finish_reason"] == "length"


def test_unknown_fields_are_ignored(pod_url: str) -> None:
    reply = httpx.post(
        f"{pod_url}/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0.7, "foo": 1},
        timeout=10,
    )

    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 2
