"""The sidecar's decisions, pure: what a prefill pod's answer means, and what the decode pod
does after the prefill leg. The sidecar's HTTP code (`tandem.sidecar.service`,
`tandem.sidecar.prefill`) and the virtual-time cluster of `tandem plan` both follow these, so
the two cannot drift apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

from tandem.sidecar.config import PrefillFailurePolicy

PrefillFailure = Literal[
    "prefill_timeout", "prefill_unreachable", "prefill_5xx", "no_kv_transfer_params",
    "no_candidate",
]  # fmt: skip
"""Why no prefill pod prefilled the prompt."""

FAILURE_STATUS: dict[str, int] = {"prefill_unreachable": 503, "prefill_timeout": 504}
"""The status answered when a prefill failure ends the request (`next-candidate`, `fail`);
any other failure is a 502."""


class Next(enum.Enum):
    """What the decode pod does once the prefill leg has ended."""

    DECODE_WITH_KV = "decode_with_kv"
    """Decode, reading the prefilled KV from the prefill pod."""
    PREFILL_LOCALLY = "prefill_locally"
    """Fall back: the decode pod prefills the prompt itself (`local` policy)."""
    RELAY_CLIENT_ERROR = "relay_client_error"
    """The prefill pod refused the request as the client's mistake (4xx): answer that."""
    FAIL = "fail"
    """Answer `status`: the prefill failed and the policy forbids a local prefill."""


@dataclass(frozen=True, slots=True)
class Step:
    next: Next
    reason: str | None = None
    status: int | None = None


def reply_failure(status_code: int, params: dict[str, Any] | None) -> PrefillFailure | None:
    """Why a prefill pod's answer (not a 4xx) did not prefill, or None when it did: a 5xx,
    or a success without the KV handle (`kv_transfer_params`) the decode pod needs."""
    if status_code >= 500:
        return "prefill_5xx"
    return "no_kv_transfer_params" if params is None else None


def tries_next_candidate(policy: PrefillFailurePolicy) -> bool:
    """Whether a failed prefill moves on to the orchestrator's next prefill candidate."""
    return policy != "fail"


def after_prefill(
    *, prefilled: bool, client_error: bool, failure: str | None, policy: PrefillFailurePolicy
) -> Step:
    """The decode pod's next step, from how the prefill leg ended."""
    if prefilled:
        return Step(Next.DECODE_WITH_KV)
    if client_error:
        return Step(Next.RELAY_CLIENT_ERROR)
    reason = failure or "no_candidate"
    if policy == "local":
        return Step(Next.PREFILL_LOCALLY, reason)
    return Step(Next.FAIL, reason, FAILURE_STATUS.get(reason, 502))
