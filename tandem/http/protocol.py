"""What the hops tell one another besides the OpenAI API: tandem's headers, the body fields
only tandem may set, request ids; and reading a request body as a JSON object. No I/O."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from tandem.errors import OpenAIError

PREFILLER_HEADER = "x-prefiller-host-port"
REQUEST_ID_HEADER = "x-request-id"

NOT_STARTED_HEADER = "x-tandem-not-started"
"""On a sidecar's error answer: its local vLLM never received the request (the connection
was refused), so the gateway may send the request to another decode endpoint."""
PREFILL_FAILED_HEADER = "x-tandem-prefill-failed"
"""On a sidecar's answer: the prefill targets (host:port, comma-separated) that failed this
request, for their circuit breakers in the orchestrator."""
PREFILLED_BY_HEADER = "x-tandem-prefilled-by"
"""On a sidecar's answer: the prefill target that prefilled the request."""
ERROR_STAGE_HEADER = "x-tandem-error-stage"
"""On a sidecar's 5xx: `prefill` when the prefill leg failed it (the decode pod is not at
fault, so its circuit breaker does not count it)."""
SIDECAR_REPORT_HEADERS = (
    NOT_STARTED_HEADER,
    PREFILL_FAILED_HEADER,
    PREFILLED_BY_HEADER,
    ERROR_STAGE_HEADER,
)
"""What a sidecar tells the orchestrator on its answers; never passed on to a client."""

TANDEM_ONLY_FIELDS = ("kv_transfer_params",)
"""Body fields only tandem may set: a client's `kv_transfer_params` would make the decode
pod's vLLM read KV from a host, port and blocks of the client's choosing."""


def json_object(body: bytes) -> dict[str, Any]:
    """An inference request's body as a JSON object; a 400 in OpenAI's shape otherwise."""
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # ValueError besides JSONDecodeError: an integer past Python's digit limit;
        # RecursionError: nesting deeper than the parser's stack.
        raise OpenAIError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "request body must be a JSON object")
    return payload


def strip_tandem_fields(payload: dict[str, Any]) -> list[str]:
    """Remove the fields only tandem may set from a client's body; returns their names."""
    return [name for name in TANDEM_ONLY_FIELDS if payload.pop(name, None) is not None]


def request_id_of(headers: Mapping[str, str]) -> str:
    """The client's `x-request-id`, or a new id when it sent none."""
    return headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
