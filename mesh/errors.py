"""Errors answered to a client, in OpenAI's error shape, for every tandem service.

The gateway, the sidecar and the simulated pod answer `{"error": {"message", "type", "param",
"code"}}` with the HTTP status equal to `code`, as vLLM does (vllm-project/vllm:
vllm/entrypoints/serve/exception_handling/error_response.py). A client mistake is a 4xx that
says what to fix; when no pod can take a request the client gets 503 (which pool is empty)
or 429 with Retry-After (all saturated); an upstream failure is 502, 503 or 504 and says what
failed. No traceback ever reaches a client. Rendering as an HTTP response is `mesh.http`'s.
"""

from __future__ import annotations

from http import HTTPStatus

CLIENT_CLOSED_REQUEST = 499
"""The status logged and counted for a request whose client went away before its answer
(nginx's "client closed request"); nobody receives it."""

REJECT_REASON_HEADER = "x-tandem-reject-reason"
"""On a request the orchestrator refused without sending it anywhere (429, 503, 400, 413):
why, as a fixed label (`saturated`, `queue_full`, `no_endpoints`, ...)."""

ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class OpenAIError(Exception):
    """An error answered to the client with this status, OpenAI-shaped."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        reject_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or error_type(status)
        self.headers = headers or {}
        self.reject_reason = reject_reason
        """Set when the orchestrator refused the request without sending it anywhere: a
        fixed label, sent to the client in `x-tandem-reject-reason`."""
        if reject_reason is not None:
            self.headers[REJECT_REASON_HEADER] = reject_reason

    def body(self) -> dict[str, dict[str, object]]:
        return error_body(self.status, self.message, self.param, type=self.type)


class ClientDisconnected(Exception):
    """The client went away before its response was ready; its work was cancelled."""


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, HTTPStatus(status).phrase)


def error_body(
    status: int, message: str, param: str | None = None, *, type: str | None = None
) -> dict[str, dict[str, object]]:
    """The JSON body of an error answer."""
    return {
        "error": {
            "message": message,
            "type": type or error_type(status),
            "param": param,
            "code": status,
        }
    }
