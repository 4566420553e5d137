"""tandem's exceptions, drawn once: every error tandem raises on purpose is a `TandemError`,
and anything else that escapes is a bug.

```
TandemError
├── UsageError             what whoever runs tandem must fix; the CLI says it and exits 2
│   ├── ConfigError        an invalid option or configuration file, named by its field
│   │   ├── OrchestratorConfigError
│   │   ├── SchedulerConfigError
│   │   └── UnknownProfileError
│   ├── WorkloadError      a workload file `tandem bench` or `tandem plan` cannot use
│   ├── ResultsFormatError a results file that is not one
│   ├── PlanError          `tandem plan` options that do not fit the workload
│   └── ToolsMissingError  a tool command without the `tools` extra installed
├── StartupError           a process tandem started did not come up; the CLI exits 1
│   └── EngineMissingError the real engine is not installed
├── OpenAIError            an answer to an API client, in OpenAI's error shape
├── ClientDisconnected     the client went away before its answer was ready
├── SchedulingError        no endpoint can take a request (answered 503 or 429)
├── KVReadError            a consumer asked a producer for KV blocks it does not hold
└── UpstreamError          a pod or peer failed, or sent what tandem cannot read
    ├── KVTransferError    a KV read or notification over the side channel failed
    ├── MetricsParseError  a pod's /metrics without the families tandem reads
    └── EventFormatError   bytes on a KV event stream that are not an event batch
```

Errors answered to a client take OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`, with the HTTP status equal to `code`, as vLLM does (vllm-project/vllm:
vllm/entrypoints/serve/exception_handling/error_response.py). A client mistake is a 4xx that
says what to fix; when no pod can take a request the client gets 503 (which pool is empty)
or 429 with Retry-After (all saturated); an upstream failure is 502, 503 or 504 and says what
failed. No traceback ever reaches a client. Rendering as an HTTP response is
`tandem.http.handlers`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

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


class TandemError(Exception):
    """Base of every error tandem raises on purpose."""


class UsageError(TandemError):
    """A mistake of whoever runs tandem (a command line, a configuration, a workload or a
    results file they gave), which the message says how to fix."""


class ConfigError(UsageError):
    """An option or a configuration file that says something invalid; the message names the
    field."""


class OrchestratorConfigError(ConfigError):
    """The orchestrator's configuration file is invalid."""


class SchedulerConfigError(ConfigError):
    """A scheduler configuration (an `EndpointPickerConfig`) is invalid, or names a plugin or
    parameter that does not exist."""


class UnknownProfileError(ConfigError):
    """An engine profile name that is not one of tandem's."""


class WorkloadError(UsageError):
    """A workload file that `tandem bench` or `tandem plan` cannot use."""


class ResultsFormatError(UsageError):
    """A file given as a results file that is not one."""


class PlanError(UsageError):
    """`tandem plan` options that do not fit the workload."""


class ToolsMissingError(UsageError):
    """A tool command (bench, microbench, plan, fuzz) run without the `tools` extra."""


class StartupError(TandemError):
    """A process tandem started did not come up: it exited, or did not answer in time."""


class EngineMissingError(StartupError):
    """The real engine is not importable from this Python."""


class SchedulingError(TandemError):
    """No endpoint can take the request; `status` is what the client gets (503 or 429)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


class KVReadError(TandemError):
    """A consumer's read of held blocks failed (released, expired, or other blocks); the
    message says why."""


class UpstreamError(TandemError):
    """A pod or a peer failed, or sent what tandem cannot read."""


class KVTransferError(UpstreamError):
    """A transfer or notification to a producer failed; the message says why."""


class MetricsParseError(UpstreamError):
    """A pod's /metrics exposition lacks the families tandem reads."""


class EventFormatError(UpstreamError):
    """Bytes that are not a KV event batch."""


class OpenAIError(TandemError):
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


class ClientDisconnected(TandemError):
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


def field_problems(errors: Iterable[Mapping[str, Any]], prefix: str = "") -> str:
    """Validation errors (pydantic's `ValidationError.errors()`) as one line naming each
    field by its path, e.g. `plugins[2].parameters.weight: ...; port: ...`."""
    problems = []
    for error in errors:
        where = prefix + _field_path(error["loc"])
        problems.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(problems)


def _field_path(location: Iterable[int | str]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
