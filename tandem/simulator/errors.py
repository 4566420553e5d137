"""Errors a simulated pod returns, in vLLM's OpenAI error shape.

vLLM answers `{"error": {"message", "type", "param", "code"}}` with the HTTP status equal to
`code` (vllm-project/vllm: vllm/entrypoints/serve/exception_handling/error_response.py).
"""

from __future__ import annotations

import re
from http import HTTPStatus

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tandem.errors import OpenAIError
from tandem.http.handlers import error_response


def invalid_parameter(message: str, parameter: str, value: object = None) -> OpenAIError:
    """A 400 for one bad parameter, worded as vLLM's VLLMValidationError prints itself."""
    suffix = f"parameter={parameter}" if value is None else f"parameter={parameter}, value={value}"
    return OpenAIError(400, f"{message} ({suffix})", param=parameter)


def unnamed_parameter(message: str) -> OpenAIError:
    """A 400 for a check vLLM raises without naming the parameter: no param, no suffix."""
    return OpenAIError(400, message)


_MAX_REPORTED_ERRORS = 10
_MAX_ERROR_INPUT_CHARS = 200
_MAX_ERROR_CHARS = 1000

# pydantic-core's names for union branches and wrappers, which vLLM leaves out of an error's
# location (vllm-project/vllm: vllm/entrypoints/serve/exception_handling/handlers/validation.py).
_INTERNAL_LOCATION_PARTS = frozenset(
    {
        "function-wrap", "function-after", "function-before", "function-plain",
        "json-or-python", "lax-or-strict", "chain", "default", "nullable", "tagged-union",
        "union", "call", "arguments", "is-instance", "is-subclass", "callable", "str", "int",
        "float", "bool", "bytes", "bytearray", "list", "tuple", "dict", "set", "frozenset",
        "complex", "none", "nonetype",
    }
)  # fmt: skip
_BRACKETED = re.compile(r"[\[\]{}()]")


def error_location(loc: tuple[object, ...]) -> str:
    """A pydantic error location dotted, without union branches (`body.prompt`)."""
    parts = [
        str(part)
        for part in loc
        if not _BRACKETED.search(str(part)) and str(part).lower() not in _INTERNAL_LOCATION_PARTS
    ]
    return ".".join(parts or [str(part) for part in loc])


def validation_error(exc: RequestValidationError) -> OpenAIError:
    """vLLM's 400 for a schema error: "N validation error(s):" then one line per error, each
    the pydantic error dict with its location cleaned of union branches; param is the first
    error's location (vllm-project/vllm: .../exception_handling/handlers/validation.py)."""
    errors = list(exc.errors())
    if not errors:
        return OpenAIError(400, "Validation error", type="Bad Request")
    lines = []
    for err in errors[:_MAX_REPORTED_ERRORS]:
        lines.append("  " + _format_error(err))
    count = len(errors)
    label = "error" if count == 1 else "errors"
    if count > _MAX_REPORTED_ERRORS:
        lines.append(f"  ...and {count - _MAX_REPORTED_ERRORS} more {label}")
    first = errors[0]
    loc = first.get("loc") if isinstance(first, dict) else None
    param = error_location(tuple(loc)) if loc else None
    message = "\n".join([f"{count} validation {label}:", *lines])
    return OpenAIError(400, message, param=param, type="Bad Request")


def _format_error(err: object) -> str:
    if isinstance(err, dict):
        item = dict(err)
        if "input" in item:
            item["input"] = _short_input(item["input"])
        loc = item.get("loc")
        if isinstance(loc, (tuple, list)):
            item["loc"] = error_location(tuple(loc))
        err = item
    text = str(err)
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "...[truncated]"


def _short_input(value: object) -> object:
    if isinstance(value, str):
        if len(value) > _MAX_ERROR_INPUT_CHARS:
            return value[:_MAX_ERROR_INPUT_CHARS] + "...[truncated]"
        return value
    if isinstance(value, (bytes, bytearray)):
        return f"<{type(value).__name__} of {len(value)} bytes>"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = str(value)
    return (
        text
        if len(text) <= _MAX_ERROR_INPUT_CHARS
        else text[:_MAX_ERROR_INPUT_CHARS] + "...[truncated]"
    )


UNSUPPORTED_MEDIA_TYPE = "Unsupported Media Type: Only 'application/json' is allowed"


async def require_json(request: Request) -> None:
    """vLLM's check on its inference routes: a body that is not `application/json` is a 400
    (vllm-project/vllm: vllm/entrypoints/serve/utils/api_utils.py, validate_json_request)."""
    media_type = request.headers.get("content-type", "").lower().split(";", maxsplit=1)[0]
    if media_type != "application/json":
        raise RequestValidationError(errors=[UNSUPPORTED_MEDIA_TYPE])


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to vLLM's error JSON; never leak a traceback."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    # Only FastAPI's HTTPException: the router's own 404 and 405 (Starlette's) keep FastAPI's
    # `{"detail": ...}` body, as in vLLM, which registers the same pair of handlers
    # (vllm-project/vllm: vllm/entrypoints/serve/exception_handling/register.py).
    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase
        return error_response(OpenAIError(exc.status_code, str(exc.detail), type=phrase))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(OpenAIError(500, f"internal error: {type(exc).__name__}"))
