"""Forwarding HTTP requests to a pod: headers, error mapping, streaming relay, cancellation.

Shared by the gateway and the routing sidecar, both of which stand in front of vLLM; what
they say to each other (headers, fields, request ids) is `tandem.http.protocol`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import httpx
from fastapi import Request
from starlette.responses import Response

from tandem.errors import ClientDisconnected, OpenAIError, error_body
from tandem.logs import EventLog

logger = EventLog(__name__)

# RFC 9110 section 7.6.1 connection-specific fields, plus what httpx/Starlette recompute.
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
        "content-length",
    }
)  # fmt: skip


def upstream_headers(
    incoming: Mapping[str, str], *, drop: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The client's headers minus hop-by-hop fields and anything in `drop` (lower case)."""
    return {
        key: value
        for key, value in incoming.items()
        if key.lower() not in _HOP_BY_HOP and key.lower() not in drop
    }


# The serving proxy writes its own (RFC 9110 section 6.6.1: one Date per message).
_SET_BY_SERVER = frozenset({"date", "server"})


def downstream_headers(upstream: httpx.Headers) -> dict[str, str]:
    """A pod's response headers minus hop-by-hop fields and those the server sets itself."""
    return {
        k: v
        for k, v in upstream.items()
        if k.lower() not in _HOP_BY_HOP and k.lower() not in _SET_BY_SERVER
    }


def upstream_failure(what: str, exc: httpx.HTTPError) -> tuple[OpenAIError, str]:
    """Map an httpx failure to the client's status, and a fixed kind label for metrics."""
    if isinstance(exc, httpx.ConnectError):
        return OpenAIError(503, f"{what} refused the connection or is unreachable"), "connect"
    if isinstance(exc, httpx.TimeoutException):
        return OpenAIError(504, f"{what} did not answer in time ({type(exc).__name__})"), (
            "timeout"
        )
    return OpenAIError(502, f"{what} failed: {type(exc).__name__}"), "protocol"


async def relay_stream(
    response: httpx.Response,
    *,
    what: str,
    chunks: AsyncIterator[bytes] | None = None,
    on_first_chunk: Callable[[], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """Yield a pod's response body chunk by chunk as it arrives (from `chunks` when the
    caller has already started reading it).

    A failure after the headers went out cannot change the status any more: for an SSE
    stream it ends with an OpenAI error event and [DONE], as vLLM reports mid-stream errors.
    """
    first = True
    try:
        async for chunk in chunks if chunks is not None else response.aiter_raw():
            if first and on_first_chunk is not None:
                on_first_chunk()
            first = False
            yield chunk
    except httpx.HTTPError as exc:
        error, kind = upstream_failure(what, exc)
        logger.warning("upstream_stream_failed", what=what, error=repr(exc))
        if on_failure is not None:
            on_failure(kind)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            event = json.dumps(error_body(error.status, error.message))
            yield f"data: {event}\n\ndata: [DONE]\n\n".encode()
    finally:
        await response.aclose()
        if on_close is not None:
            await on_close()


async def until_disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read; nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    """Await `work`; if the client goes away first, cancel it (and so its upstream request).

    One watcher task cancels the current task on disconnect, which is cheaper on the hot
    path than running the work in a task of its own and waiting on both."""
    current = asyncio.current_task()
    assert current is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        await until_disconnected(request)
        disconnected = True
        current.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected:
            current.uncancel()
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()
