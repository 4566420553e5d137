"""The sidecar's prefill failure policy: `local` (the default) tries the next candidate and
then prefills on the decode pod, `next-candidate` tries the next and then fails, `fail`
fails at the first failure. Each failure is answered in OpenAI's shape and counted."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from tests.support.pd import (
    BY_SOURCE,
    MODEL,
    address,
    complete,
    decode_config,
    delta,
    prefill_config,
    running_sidecar,
    samples,
    words,
)
from tests.support.servers import free_port, running_pod

LOCAL = f"{BY_SOURCE}{{source=local_compute}}"
EXTERNAL = f"{BY_SOURCE}{{source=external_kv_transfer}}"


@dataclass(frozen=True, slots=True)
class Pools:
    good: str
    failing: str
    down: str
    decode_url: str
    good_url: str
    sidecars: dict[str, str]


@pytest.fixture(scope="module")
def pools() -> Iterator[Pools]:
    good = prefill_config()
    failing = prefill_config(faults={"error_rate": 1.0, "error_codes": (503,)})
    decode = decode_config()
    down = free_port()
    with ExitStack() as stack:
        good_url = stack.enter_context(running_pod(good))
        stack.enter_context(running_pod(failing))
        decode_url = stack.enter_context(running_pod(decode))
        allowed = (good.port, failing.port, down)
        sidecars = {
            policy: stack.enter_context(
                running_sidecar(decode.port, allowed, prefill_failure_policy=policy)
            ).url
            for policy in ("local", "next-candidate", "fail")
        }
        yield Pools(
            address(good.port), address(failing.port), address(down), decode_url, good_url, sidecars
        )


def send(
    pools: Pools, policy: str, targets: list[str], offset: int
) -> tuple[int, str, dict[str, float]]:
    body = {"model": MODEL, "prompt": words(300, offset=offset), "max_tokens": 2}
    before = samples(pools.decode_url)
    reply = complete(pools.sidecars[policy], body, ",".join(targets))
    after = samples(pools.decode_url)
    changes = {key: delta(before, after, key) for key in (LOCAL, EXTERNAL)}
    message = reply.json().get("error", {}).get("message", "") if reply.status_code >= 400 else ""
    return reply.status_code, message, changes


def test_fail_answers_at_the_first_failure_without_trying_the_next(pools: Pools) -> None:
    good_before = samples(pools.good_url)
    status, message, changes = send(pools, "fail", [pools.failing, pools.good], offset=11)
    assert status == 502
    assert "prefill_5xx" in message
    assert "prefill_failure_policy is fail" in message
    assert changes == {LOCAL: 0, EXTERNAL: 0}
    assert (
        samples(pools.good_url)["vllm:prompt_tokens_total{}"]
        == good_before["vllm:prompt_tokens_total{}"]
    )


def test_next_candidate_moves_on_and_then_fails_without_local_prefill(pools: Pools) -> None:
    status, message, changes = send(pools, "next-candidate", [pools.failing, pools.down], 12)
    assert status == 503  # the last candidate was unreachable
    assert "prefill_unreachable" in message
    assert changes == {LOCAL: 0, EXTERNAL: 0}


def test_next_candidate_is_served_by_a_later_candidate(pools: Pools) -> None:
    status, _, changes = send(pools, "next-candidate", [pools.failing, pools.good], offset=13)
    assert status == 200
    assert changes[EXTERNAL] > 0


def test_local_prefills_on_the_decode_pod_when_every_candidate_fails(pools: Pools) -> None:
    status, _, changes = send(pools, "local", [pools.failing, pools.down], offset=14)
    assert status == 200
    assert changes[LOCAL] > 0
    assert changes[EXTERNAL] == 0
