"""Errors a simulated pod returns, in vLLM's OpenAI error shape.

vLLM answers `{"error": {"message", "type", "param", "code"}}` with the HTTP status equal to
`code` (vllm-project/vllm: vllm/entrypoints/serve/exception_handling/error_response.py).
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

ERROR_TYPES: dict[int, str] = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class OpenAIError(Exception):
    """An error that reaches the client as OpenAI error JSON with this status."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or ERROR_TYPES.get(status, HTTPStatus(status).phrase)

    def body(self) -> dict[str, dict[str, object]]:
        return error_body(self.status, self.message, param=self.param, type=self.type)


def error_body(
    status: int, message: str, *, param: str | None = None, type: str | None = None
) -> dict[str, dict[str, object]]:
    """The JSON body of an error response."""
    return {
        "error": {
            "message": message,
            "type": type or ERROR_TYPES.get(status, HTTPStatus(status).phrase),
            "param": param,
            "code": status,
        }
    }


def error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def validation_message(exc: RequestValidationError) -> str:
    """One readable line per schema problem: where it is and what is wrong."""
    parts = []
    for err in exc.errors():
        location = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{location}: {err.get('msg')}" if location else str(err.get("msg")))
    return "; ".join(parts) or "invalid request body"


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to vLLM's error JSON; never leak a traceback."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(OpenAIError(400, validation_message(exc), type="Bad Request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(OpenAIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(OpenAIError(500, f"internal error: {type(exc).__name__}"))
