"""The sidecar's decisions after the prefill leg, as both the sidecar and `tandem plan`
take them."""

from __future__ import annotations

import pytest

from tandem.sidecar.flow import Next, Step, after_prefill, reply_failure, tries_next_candidate


@pytest.mark.parametrize(
    ("status", "params", "failure"),
    [
        (200, {"remote_block_ids": [1]}, None),
        (200, None, "no_kv_transfer_params"),
        (500, None, "prefill_5xx"),
        (503, {"remote_block_ids": [1]}, "prefill_5xx"),
    ],
)
def test_a_prefill_answer_fails_on_5xx_or_without_a_kv_handle(
    status: int, params: dict[str, object] | None, failure: str | None
) -> None:
    assert reply_failure(status, params) == failure


@pytest.mark.parametrize(
    ("prefilled", "client_error", "failure", "policy", "step"),
    [
        (True, False, None, "fail", Step(Next.DECODE_WITH_KV)),
        (False, True, None, "local", Step(Next.RELAY_CLIENT_ERROR)),
        (False, False, "prefill_5xx", "local", Step(Next.PREFILL_LOCALLY, "prefill_5xx")),
        (False, False, None, "local", Step(Next.PREFILL_LOCALLY, "no_candidate")),
        (False, False, "prefill_unreachable", "next-candidate",
         Step(Next.FAIL, "prefill_unreachable", 503)),
        (False, False, "prefill_timeout", "fail", Step(Next.FAIL, "prefill_timeout", 504)),
        (False, False, "no_kv_transfer_params", "fail",
         Step(Next.FAIL, "no_kv_transfer_params", 502)),
    ],
)  # fmt: skip
def test_what_the_decode_pod_does_after_the_prefill_leg(
    prefilled: bool, client_error: bool, failure: str | None, policy: str, step: Step
) -> None:
    assert (
        after_prefill(
            prefilled=prefilled,
            client_error=client_error,
            failure=failure,
            policy=policy,  # type: ignore[arg-type]
        )
        == step
    )


def test_only_the_fail_policy_stops_at_the_first_candidate() -> None:
    assert tries_next_candidate("local")
    assert tries_next_candidate("next-candidate")
    assert not tries_next_candidate("fail")
