"""Fields only tandem may set never reach a pod from a client, and bodies the JSON parser
cannot take get a 400, at the gateway and at the sidecar."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_gateway import gateway
from tests.support.fakes import Recorder, recording_server
from tests.support.pd import running_sidecar, samples
from tests.support.servers import free_port, serve, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HOSTILE = {
    "do_remote_prefill": True,
    "remote_host": "127.0.0.9",
    "remote_port": 9,
    "remote_engine_id": "someone-else",
    "remote_request_id": "cmpl-someone-else-0",
    "remote_block_ids": [[0, 1, 2]],
}
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "completions": ("/v1/completions", {"prompt": "hello there"}),
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}]}),
}


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[Recorder, int]]:
    recorder = Recorder()
    port = free_port()
    with serve(recording_server(recorder), port):
        yield recorder, port


@pytest.fixture(scope="module")
def gateway_url(backend: tuple[Recorder, int]) -> Iterator[str]:
    _, port = backend
    endpoint = {"name": "pod-0", "host": "127.0.0.1", "port": port, "role": "both"}
    with gateway([endpoint], scrape={"interval_s": 60}) as url:
        assert wait_until(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200)
        yield url


@pytest.mark.parametrize("route", list(ROUTES))
def test_the_gateway_drops_client_kv_transfer_params(
    backend: tuple[Recorder, int], gateway_url: str, route: str
) -> None:
    recorder, _ = backend
    path, body = ROUTES[route]
    before = samples(gateway_url)

    response = httpx.post(
        f"{gateway_url}{path}",
        json={"model": MODEL, **body, "kv_transfer_params": HOSTILE},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    forwarded = recorder.bodies[-1]
    assert "kv_transfer_params" not in forwarded
    assert forwarded["model"] == MODEL
    key = "tandem_client_fields_dropped_total{field=kv_transfer_params}"
    assert samples(gateway_url).get(key, 0) - before.get(key, 0) == 1


def test_the_sidecar_drops_client_kv_transfer_params(backend: tuple[Recorder, int]) -> None:
    recorder, port = backend
    with running_sidecar(port) as sidecar:
        response = httpx.post(
            f"{sidecar.url}/v1/completions",
            json={"model": MODEL, "prompt": "hello", "kv_transfer_params": HOSTILE},
            timeout=30,
        )
        counters = sidecar.own_samples()

    assert response.status_code == 200, response.text
    assert "kv_transfer_params" not in recorder.bodies[-1]
    assert counters["tandem_sidecar_client_fields_dropped_total{field=kv_transfer_params}"] == 1


UNPARSABLE: dict[str, bytes] = {
    "an integer of 100,000 digits": b'{"model": "m", "prompt": "a", "max_tokens": '
    + b"9" * 100_000
    + b"}",
    "nesting deeper than the parser's stack": b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000
    + b"}",
}  # fmt: skip


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("case", list(UNPARSABLE))
def test_bodies_the_parser_cannot_take_get_a_400(gateway_url: str, route: str, case: str) -> None:
    path, _ = ROUTES[route]
    response = httpx.post(
        f"{gateway_url}{path}",
        content=UNPARSABLE[case],
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "BadRequestError"
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(
    "body", [b'{"prompt": "\xff\xfe", "max_tokens": 2}', b"[1, 2]", b"{", b""],
    ids=["invalid-utf-8", "not-an-object", "truncated", "empty"],
)  # fmt: skip
def test_the_sidecar_refuses_a_body_that_is_not_a_json_object(
    backend: tuple[Recorder, int], body: bytes
) -> None:
    recorder, port = backend
    seen = len(recorder.bodies)
    with running_sidecar(port) as sidecar:
        response = httpx.post(
            f"{sidecar.url}/v1/completions",
            content=body,
            headers={"content-type": "application/json", "x-request-id": "bad-body"},
            timeout=30,
        )
        counters = sidecar.own_samples()
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequestError"
    assert response.headers["x-request-id"] == "bad-body"
    assert counters["tandem_sidecar_errors_total{reason=bad_body}"] == 1
    assert len(recorder.bodies) == seen  # nothing reached vLLM
