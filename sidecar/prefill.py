"""The prefill leg: ask a prefill pod to compute the prompt's KV and hold it for us.

The request is what vLLM's NixlConnector expects (vllm-project/vllm:
tests/v1/kv_connector/nixl_integration/toy_proxy_server.py): the client's body with
`kv_transfer_params.do_remote_decode = true`, one output token, not streamed, without stream
options or minimum lengths, and the client's `x-request-id`. Candidates are tried in the
orchestrator's order: a 4xx is the client's mistake and ends the attempt; a connection error,
5xx or timeout moves on to the next candidate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tandem.logs import EventLog
from tandem.sidecar.allowlist import HostPort
from tandem.sidecar.flow import PrefillFailure, reply_failure
from tandem.sidecar.metrics import SidecarMetrics

logger = EventLog(__name__)

REMOTE_DECODE_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def prefill_body(payload: dict[str, Any]) -> bytes:
    """The prefill request for a client's completion or chat body."""
    body = dict(payload)
    body["kv_transfer_params"] = dict(REMOTE_DECODE_PARAMS)
    body["stream"] = False
    body["max_tokens"] = 1
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    for key in ("stream_options", "min_tokens", "min_completion_tokens"):
        body.pop(key, None)
    return json.dumps(body).encode()


@dataclass(frozen=True, slots=True)
class PrefillOutcome:
    """How the prefill leg ended.

    Exactly one of: `params` (KV is held for us at `target`), `client_error` (a 4xx to relay
    as is), or `fallback_reason` (no candidate prefilled: prefill locally).
    """

    params: dict[str, Any] | None = None
    target: HostPort | None = None
    client_error: httpx.Response | None = None
    client_error_body: bytes = b""
    fallback_reason: str | None = None
    seconds: float = 0.0
    failed: tuple[HostPort, ...] = ()
    """Candidates that failed before the outcome (unreachable, timed out, 5xx, no KV
    handle), in the order tried."""


async def run_prefill(
    client: httpx.AsyncClient,
    candidates: Sequence[HostPort],
    path: str,
    body: bytes,
    headers: dict[str, str],
    metrics: SidecarMetrics,
    request_id: str,
    *,
    next_candidate: bool = True,
    scheme: str = "http",
) -> PrefillOutcome:
    """Try the candidates in order until one prefills the prompt (only the first unless
    `next_candidate`)."""
    reason: PrefillFailure = "no_candidate"
    target: HostPort | None = None
    failed: list[HostPort] = []
    for position, target in enumerate(candidates if next_candidate else candidates[:1]):
        started = time.perf_counter()
        try:
            url = f"{scheme}://{target}{path}"
            reply = await client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            reason = "prefill_timeout"
        except httpx.TransportError as exc:
            reason = "prefill_unreachable"
            logger.debug("prefill_error", request_id=request_id, target=target, error=repr(exc))
        else:
            elapsed = time.perf_counter() - started
            if 400 <= reply.status_code < 500:
                return PrefillOutcome(
                    client_error=reply, client_error_body=reply.content, target=target,
                    seconds=elapsed, failed=tuple(failed),
                )  # fmt: skip
            params = _transfer_params(reply) if reply.status_code < 500 else None
            failure = reply_failure(reply.status_code, params)
            if failure is None:
                metrics.prefill_duration.observe(elapsed)
                return PrefillOutcome(
                    params=params, target=target, seconds=elapsed, failed=tuple(failed)
                )
            reason = failure
        failed.append(target)
        more = next_candidate and position + 1 < len(candidates)
        logger.warning(
            "prefill_failed",
            request_id=request_id,
            target=target,
            reason=reason,
            next=candidates[position + 1] if more else "-",
        )
        if more:
            metrics.prefill_retries.labels(reason).inc()
    return PrefillOutcome(fallback_reason=reason, target=target, failed=tuple(failed))


def _transfer_params(reply: httpx.Response) -> dict[str, Any] | None:
    try:
        params = reply.json().get("kv_transfer_params")
    except (ValueError, AttributeError):
        return None
    return params if isinstance(params, dict) and params else None
