"""What the services share: the event log line, readiness polling, OpenAI-shaped errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from tandem.cluster.readiness import wait_ready
from tandem.errors import REJECT_REASON_HEADER, OpenAIError, StartupError, error_body
from tandem.logs import EventLog


def test_an_event_is_one_line_of_its_name_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog("tandem.test")

    with caplog.at_level(logging.INFO, logger="tandem.test"):
        log.info("request_routed", request_id="r1", decode="decode-0", attempt=2)
        log.debug("not_shown", request_id="r2")

    assert [r.getMessage() for r in caplog.records] == [
        "request_routed request_id=r1 decode=decode-0 attempt=2"
    ]
    assert caplog.records[0].funcName == "test_an_event_is_one_line_of_its_name_and_fields"


def test_fields_are_not_formatted_below_the_level() -> None:
    class Loud:
        def __str__(self) -> str:
            raise AssertionError("formatted although the level is off")

    log = EventLog("tandem.test.quiet")
    log.logger.setLevel(logging.WARNING)

    log.debug("quiet", value=Loud())


def test_wait_ready_returns_at_the_first_success() -> None:
    answers: Iterator[httpx.Response | httpx.HTTPError] = iter(
        [httpx.ConnectError("refused"), httpx.Response(503), httpx.Response(200)]
    )

    def probe() -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    wait_ready(probe, "pod", timeout_s=5)

    assert next(answers, None) is None


def test_wait_ready_names_what_never_answered() -> None:
    with pytest.raises(StartupError, match=r"pod-0 not ready after 0\.2 s"):
        wait_ready(lambda: httpx.Response(503), "pod-0", timeout_s=0.2)


def test_wait_ready_stops_when_the_process_is_gone() -> None:
    def check_alive() -> None:
        raise StartupError("pod-0 exited with status 1")

    with pytest.raises(StartupError, match="exited"):
        wait_ready(lambda: httpx.Response(503), "pod-0", timeout_s=30, check_alive=check_alive)


def test_an_error_renders_in_openais_shape_with_its_reject_reason() -> None:
    error = OpenAIError(429, "all decode pods are saturated", reject_reason="saturated")

    assert error.body() == error_body(429, "all decode pods are saturated")
    assert error.body()["error"]["type"] == "RateLimitError"
    assert error.headers == {REJECT_REASON_HEADER: "saturated"}
    assert OpenAIError(405, "Method Not Allowed").type == "Method Not Allowed"
