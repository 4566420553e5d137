"""What the sidecar does when a prefill target is refused, a prefill fails, the KV load fails
or the local vLLM is gone: the status the client gets, what is retried where, and the
counters that say so. Nothing a client asked for is lost on the way."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.fakes import Recorder, recording_server
from tests.support.pd import (
    BY_SOURCE,
    MODEL,
    FakePD,
    RunningSidecar,
    address,
    closing_server,
    complete,
    decode_config,
    delta,
    fake_pd,
    prefill_config,
    producer_params,
    running_sidecar,
    samples,
    server_load,
    sidecar,
    sse_events,
    words,
)
from tests.support.servers import free_port, running_pod, serve, wait_until

REQUESTS = "tandem_sidecar_requests_total"
FALLBACKS = "tandem_sidecar_fallbacks_total"
ERRORS = "tandem_sidecar_errors_total"
OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}


def assert_openai_error(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error"}
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == OPENAI_ERROR_KEYS
    assert error["code"] == status
    assert error["message"]
    return error


# -- the allowlist ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Guarded:
    fakes: FakePD
    """The allowed (fake) prefill endpoint and the fake local vLLM."""
    unlisted: Recorder
    unlisted_port: int
    """A fake prefill endpoint the sidecar does not know."""
    url: str


@pytest.fixture(scope="module")
def guarded_module() -> Iterator[Guarded]:
    unlisted, unlisted_port = Recorder(), free_port()
    with ExitStack() as stack:
        fakes = stack.enter_context(fake_pd(producer_params(free_port())))
        stack.enter_context(serve(recording_server(unlisted), unlisted_port))
        url = stack.enter_context(sidecar(fakes.vllm_port, (fakes.prefill_port,)))
        yield Guarded(fakes, unlisted, unlisted_port, url)


@pytest.fixture
def guarded(guarded_module: Guarded) -> Guarded:
    guarded_module.fakes.clear()
    guarded_module.unlisted.bodies.clear()
    guarded_module.unlisted.headers.clear()
    return guarded_module


REFUSED = [
    pytest.param("127.0.0.1:{unlisted}", "127.0.0.1:{unlisted}", id="known-host-other-port"),
    pytest.param("localhost:{allowed}", "localhost:{allowed}", id="other-host-known-port"),
    pytest.param(
        "127.0.0.1:{allowed},127.0.0.1:{unlisted}", "127.0.0.1:{unlisted}", id="ranked-list"
    ),
]


@pytest.mark.parametrize(("header", "refused"), REFUSED)
def test_a_target_outside_the_allowlist_is_refused_and_never_contacted(
    guarded: Guarded, header: str, refused: str
) -> None:
    ports = {"allowed": guarded.fakes.prefill_port, "unlisted": guarded.unlisted_port}
    before = samples(guarded.url)
    reply = complete(guarded.url, {"model": MODEL, "prompt": "x"}, header.format(**ports))
    after = samples(guarded.url)

    error = assert_openai_error(reply, 403)
    assert refused.format(**ports) in error["message"]
    assert "not a known prefill endpoint" in error["message"]
    assert guarded.unlisted.bodies == []
    assert guarded.fakes.prefill.bodies == []  # not even the allowed one ahead of it
    assert guarded.fakes.vllm.bodies == []
    assert delta(before, after, f"{ERRORS}{{reason=prefill_target_refused}}") == 1


@pytest.mark.parametrize(
    "header",
    ["no-port", "127.0.0.1:", ":8000", "127.0.0.1:http", "127.0.0.1:70000", ",127.0.0.1:1"],
)
def test_a_malformed_prefill_header_is_a_400(guarded: Guarded, header: str) -> None:
    before = samples(guarded.url)
    reply = complete(guarded.url, {"model": MODEL, "prompt": "x"}, header)
    after = samples(guarded.url)

    error = assert_openai_error(reply, 400)
    assert error["type"] == "BadRequestError"
    assert "x-prefiller-host-port" in error["message"]
    assert guarded.fakes.vllm.bodies == []
    assert delta(before, after, f"{ERRORS}{{reason=bad_prefill_header}}") == 1


# -- prefill failures -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Faulty:
    """One decode pod behind a sidecar (prefill timeout 0.25 s) that allows prefill pods that
    answer 400, 503 or never, and a port where nothing listens."""

    url: str
    decode_url: str
    targets: dict[str, str]


@pytest.fixture(scope="module")
def faulty() -> Iterator[Faulty]:
    pods = {
        "p400": prefill_config(faults={"error_rate": 1.0, "error_codes": (400,)}),
        "p503": prefill_config(faults={"error_rate": 1.0, "error_codes": (503,)}),
        "hang": prefill_config(faults={"hang_rate": 1.0}),
    }
    decode = decode_config()
    ports = {name: pod.port for name, pod in pods.items()} | {"down": free_port()}
    with ExitStack() as stack:
        for pod in pods.values():
            stack.enter_context(running_pod(pod))
        decode_url = stack.enter_context(running_pod(decode))
        url = stack.enter_context(
            sidecar(decode.port, tuple(ports.values()), prefill_timeout_s=0.25)
        )
        yield Faulty(url, decode_url, {name: address(port) for name, port in ports.items()})


def test_a_prefill_4xx_is_relayed_as_is(faulty: Faulty) -> None:
    body = {"model": MODEL, "prompt": words(300, offset=1), "max_tokens": 5}
    direct = complete(f"http://{faulty.targets['p400']}", body)
    before = [samples(faulty.url), samples(faulty.decode_url)]
    reply = complete(faulty.url, body, faulty.targets["p400"])
    after = [samples(faulty.url), samples(faulty.decode_url)]

    assert reply.status_code == direct.status_code == 400
    assert reply.json() == direct.json()
    assert reply.json()["error"]["message"] == "Injected fault: bad request"
    assert delta(before[0], after[0], f"{ERRORS}{{reason=prefill_4xx}}") == 1
    assert delta(before[1], after[1], "vllm:prompt_tokens_total{}") == 0  # never decoded
    assert delta(before[1], after[1], "vllm:request_success_total{finished_reason=length}") == 0


FALLBACK_CASES = [
    pytest.param("p503", "prefill_5xx", {}, id="5xx"),
    pytest.param("down", "prefill_unreachable", {}, id="unreachable"),
    pytest.param("hang", "prefill_timeout", {}, id="timeout"),
    pytest.param("p503,hang", "prefill_timeout", {"prefill_5xx": 1}, id="ranked-all-fail"),
    pytest.param("down,p503", "prefill_5xx", {"prefill_unreachable": 1}, id="ranked-down-5xx"),
]
PROMPT_OFFSETS = {"p503": 200, "down": 210, "hang": 220, "p503,hang": 230, "down,p503": 240}
"""A prompt of its own per case, so the decode pod's prefix cache never serves one."""


@pytest.mark.parametrize(("targets", "reason", "retries"), FALLBACK_CASES)
def test_a_failed_prefill_falls_back_to_local_prefill(
    faulty: Faulty,
    caplog: pytest.LogCaptureFixture,
    targets: str,
    reason: str,
    retries: dict[str, int],
) -> None:
    header = ",".join(faulty.targets[name] for name in targets.split(","))
    body = {"model": MODEL, "prompt": words(300, PROMPT_OFFSETS[targets]), "max_tokens": 5}
    before = [samples(faulty.url), samples(faulty.decode_url)]
    with caplog.at_level(logging.WARNING, logger="tandem.sidecar.service"):
        reply = complete(faulty.url, body, header, request_id=f"rid-{targets}")
    after = [samples(faulty.url), samples(faulty.decode_url)]

    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    assert usage["completion_tokens"] == 5  # nothing lost
    assert delta(before[1], after[1], f"{BY_SOURCE}{{source=local_compute}}") == 300
    assert delta(before[1], after[1], f"{BY_SOURCE}{{source=external_kv_transfer}}") == 0
    assert delta(before[0], after[0], f"{FALLBACKS}{{reason={reason}}}") == 1
    assert delta(before[0], after[0], f"{REQUESTS}{{mode=fallback}}") == 1
    assert delta(before[0], after[0], f"{REQUESTS}{{mode=disaggregated}}") == 0
    for retry_reason, count in retries.items():
        key = f"tandem_sidecar_prefill_retries_total{{reason={retry_reason}}}"
        assert delta(before[0], after[0], key) == count
    assert any(
        "prefill_fallback" in record.getMessage()
        and f"request_id=rid-{targets}" in record.getMessage()
        and f"reason={reason}" in record.getMessage()
        for record in caplog.records
    )


def test_a_hung_prefill_is_not_left_running_after_its_timeout(faulty: Faulty) -> None:
    body = {"model": MODEL, "prompt": words(50, offset=20), "max_tokens": 2}
    reply = complete(faulty.url, body, faulty.targets["hang"])
    hang_url = f"http://{faulty.targets['hang']}"

    assert reply.status_code == 200
    # The sidecar closed its prefill request on timeout, so the pod let it go.
    assert wait_until(lambda: server_load(hang_url) == 0)


# -- KV load failure on the decode side -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadFails:
    """A fake prefill whose kv_transfer_params point at a side channel where nothing listens,
    a real decode pod (kv_load_failure_policy=fail), and sidecars with and without the
    local retry."""

    fakes: FakePD
    decode_url: str
    retrying: str
    strict: str


@pytest.fixture(scope="module")
def load_fails() -> Iterator[LoadFails]:
    decode = decode_config(kv_load_failure_policy="fail")
    with ExitStack() as stack:
        fakes = stack.enter_context(fake_pd(producer_params(free_port())))
        decode_url = stack.enter_context(running_pod(decode))
        allowed = (fakes.prefill_port,)
        retrying = stack.enter_context(sidecar(decode.port, allowed))
        strict = stack.enter_context(sidecar(decode.port, allowed, kv_load_failure_policy="fail"))
        yield LoadFails(fakes, decode_url, retrying, strict)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_failed_kv_load_is_retried_with_local_prefill(
    load_fails: LoadFails, stream: bool
) -> None:
    body: dict[str, Any] = {"model": MODEL, "prompt": words(40, offset=30 + stream)}
    body |= {"max_tokens": 8, "stream": stream, "stream_options": {"include_usage": True}}
    if not stream:
        del body["stream_options"]
    before = [samples(load_fails.retrying), samples(load_fails.decode_url)]
    target = address(load_fails.fakes.prefill_port)
    reply = complete(load_fails.retrying, body, target)
    after = [samples(load_fails.retrying), samples(load_fails.decode_url)]

    assert reply.status_code == 200, reply.text
    if stream:
        events = sse_events(reply.text)
        assert all("error" not in event for event in events)
        usage = events[-1]["usage"]
    else:
        usage = reply.json()["usage"]
    assert usage["completion_tokens"] == 8
    assert delta(before[1], after[1], "vllm:nixl_num_failed_transfers_total{}") >= 1
    assert delta(before[1], after[1], "vllm:request_success_total{finished_reason=length}") == 1
    assert delta(before[1], after[1], f"{BY_SOURCE}{{source=local_compute}}") == 40
    assert delta(before[0], after[0], f"{FALLBACKS}{{reason=kv_load_failed}}") == 1
    assert delta(before[0], after[0], "tandem_sidecar_orphaned_prefills_total{}") == 0


def test_a_request_retried_after_a_failed_kv_load_is_counted_in_one_mode(
    load_fails: LoadFails,
) -> None:
    body = {"model": MODEL, "prompt": words(40, offset=40), "max_tokens": 3}
    before = samples(load_fails.retrying)
    reply = complete(load_fails.retrying, body, address(load_fails.fakes.prefill_port))
    after = samples(load_fails.retrying)

    assert reply.status_code == 200
    modes = {
        mode: delta(before, after, f"{REQUESTS}{{mode={mode}}}")
        for mode in ("local", "disaggregated", "fallback")
    }
    assert modes == {"local": 0, "disaggregated": 0, "fallback": 1}


def test_without_the_retry_a_failed_kv_load_reaches_the_client(load_fails: LoadFails) -> None:
    body: dict[str, Any] = {"model": MODEL, "prompt": words(40, offset=50), "max_tokens": 8}
    target = address(load_fails.fakes.prefill_port)
    before = samples(load_fails.strict)
    reply = complete(load_fails.strict, body, target)
    streamed = complete(load_fails.strict, body | {"stream": True}, target)
    after = samples(load_fails.strict)

    error = assert_openai_error(reply, 500)
    assert error["type"] == "InternalServerError"
    assert streamed.status_code == 200  # a stream's status went out before the failure
    assert sse_events(streamed.text) == [reply.json()]
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert delta(before, after, f"{FALLBACKS}{{reason=kv_load_failed}}") == 0


# -- the local vLLM failing -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokenVLLM:
    """Sidecars whose local vLLM is down, hangs (decode timeout 0.25 s) or closes the
    connection, each allowing one healthy prefill pod."""

    prefill_address: str
    sidecars: dict[str, RunningSidecar]
    hang_url: str


@pytest.fixture(scope="module")
def broken_vllm() -> Iterator[BrokenVLLM]:
    prefill = prefill_config()
    hang = decode_config(faults={"hang_rate": 1.0})
    closing = free_port()
    allowed = (prefill.port,)
    with ExitStack() as stack:
        stack.enter_context(running_pod(prefill))
        hang_url = stack.enter_context(running_pod(hang))
        stack.enter_context(closing_server(closing))
        sidecars = {
            "down": stack.enter_context(running_sidecar(free_port(), allowed)),
            "hang": stack.enter_context(running_sidecar(hang.port, allowed, decode_timeout_s=0.25)),
            "closing": stack.enter_context(running_sidecar(closing, allowed)),
        }
        yield BrokenVLLM(address(prefill.port), sidecars, hang_url)


VLLM_FAILURES = [
    pytest.param("down", 503, "ServiceUnavailableError", "decode_connect", id="down"),
    pytest.param("hang", 504, "GatewayTimeoutError", "decode_timeout", id="hang"),
    pytest.param("closing", 502, "BadGatewayError", "decode_protocol", id="closing"),
]


@pytest.mark.parametrize("remote_prefill", [False, True], ids=["local", "disaggregated"])
@pytest.mark.parametrize(("failure", "status", "kind", "reason"), VLLM_FAILURES)
def test_a_failing_local_vllm_is_an_openai_error(
    broken_vllm: BrokenVLLM,
    failure: str,
    status: int,
    kind: str,
    reason: str,
    remote_prefill: bool,
) -> None:
    running = broken_vllm.sidecars[failure]
    body = {"model": MODEL, "prompt": words(100, offset=60), "max_tokens": 2}
    prefiller = broken_vllm.prefill_address if remote_prefill else None
    before = running.own_samples()
    reply = complete(running.url, body, prefiller)
    after = running.own_samples()

    error = assert_openai_error(reply, status)
    assert error["type"] == kind
    assert "local vLLM" in error["message"]
    assert delta(before, after, f"{ERRORS}{{reason={reason}}}") == 1
    # A prefill whose KV no decode read is an orphan (its lease frees it on the prefill pod).
    orphans = delta(before, after, "tandem_sidecar_orphaned_prefills_total{}")
    assert orphans == (1 if remote_prefill else 0)
    if failure == "hang":  # the timed-out decode request does not keep running
        assert wait_until(lambda: server_load(broken_vllm.hang_url) == 0)


def test_the_sidecars_own_metrics_are_readable_while_the_local_vllm_is_down(
    broken_vllm: BrokenVLLM,
) -> None:
    running = broken_vllm.sidecars["down"]
    body = {"model": MODEL, "prompt": words(100, offset=80), "max_tokens": 2}
    assert complete(running.url, body, broken_vllm.prefill_address).status_code == 503
    reply = httpx.get(f"{running.url}/metrics", timeout=10, verify=False)

    assert reply.status_code == 200
    assert "tandem_sidecar_orphaned_prefills_total" in reply.text
