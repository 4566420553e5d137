"""Errors the gateway returns, in OpenAI's error shape.

A client mistake is a 4xx that says what to fix; when no pod can take a request the client
gets 503 (which pool is empty) or 429 with Retry-After (all saturated); an upstream failure
is 502, 503 or 504 and says what failed. No traceback ever reaches a client.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

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


class GatewayError(Exception):
    """An error answered to the client with this status, OpenAI-shaped."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        reject_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.reject_reason = reject_reason
        """Set when the orchestrator refused the request without sending it anywhere: a
        fixed label, sent to the client in `x-tandem-reject-reason`."""
        if reject_reason is not None:
            self.headers[REJECT_REASON_HEADER] = reject_reason

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.status, self.message, self.param),
            status_code=self.status,
            headers=self.headers,
        )


class ClientDisconnected(Exception):
    """The client went away before its response was ready; its work was cancelled."""


def error_body(status: int, message: str, param: str | None = None) -> dict[str, object]:
    kind = ERROR_TYPES.get(status, HTTPStatus(status).phrase)
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ClientDisconnected)
    async def _client_gone(_: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody is listening; nginx's "client closed"

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return GatewayError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return GatewayError(500, f"internal error in the gateway: {type(exc).__name__}").response()
