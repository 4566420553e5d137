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


def invalid_parameter(message: str, parameter: str, value: object = None) -> OpenAIError:
    """A 400 for one bad parameter, worded as vLLM's VLLMValidationError prints itself."""
    suffix = f"parameter={parameter}" if value is None else f"parameter={parameter}, value={value}"
    return OpenAIError(400, f"{message} ({suffix})", param=parameter)


def error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


_MAX_REPORTED_ERRORS = 10
_MAX_ERROR_CHARS = 1000


def validation_error(exc: RequestValidationError) -> OpenAIError:
    """vLLM's 400 for a schema error: "N validation error(s):" then one line per error, each
    the pydantic error dict with its location dotted; param is the first error's location
    (vllm-project/vllm: vllm/entrypoints/serve/exception_handling/handlers/validation.py)."""
    errors = list(exc.errors())
    lines = []
    first_location: str | None = None
    for err in errors[:_MAX_REPORTED_ERRORS]:
        item = dict(err)
        item.pop("url", None)
        location = ".".join(str(part) for part in item.get("loc", ()))
        item["loc"] = location
        if "input" in item:
            item["input"] = _short_input(item["input"])
        if "ctx" in item:
            item["ctx"] = {key: str(value) for key, value in item["ctx"].items()}
        first_location = first_location or location or None
        lines.append("  " + str(item)[:_MAX_ERROR_CHARS])
    count = len(errors)
    header = f"{count} validation error{'s' if count != 1 else ''}:"
    return OpenAIError(400, "\n".join([header, *lines]), param=first_location, type="Bad Request")


def _short_input(value: object) -> str:
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    if isinstance(value, list):
        return f"<list of {len(value)} items>"
    return str(value)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to vLLM's error JSON; never leak a traceback."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(OpenAIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(OpenAIError(500, f"internal error: {type(exc).__name__}"))
