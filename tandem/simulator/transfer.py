"""The KV side channel between simulated pods, behind the `KVTransport` interface.

A producer pod listens on its side-channel port (vLLM's VLLM_NIXL_SIDE_CHANNEL_PORT, 5600 by
default). A consumer connects to the `remote_host`/`remote_port` it was given and speaks one
JSON object per line:

    {"op": "read", "engine_id": str, "request_id": str, "block_ids": [int, ...]}
        -> {"ok": true, "num_tokens": int, "num_bytes": int} | {"ok": false, "error": str}
    {"op": "heartbeat", "request_ids": [str, ...]}    -> {"ok": true}
    {"op": "done", "request_id": str}                 -> {"ok": true, "released": bool}

"read" validates that the producer still holds the blocks (engine id, request id, block ids,
lease), which is what decides success or failure of a transfer; the time the bytes take is
modelled by the consumer. A real NIXL/UCX data path can implement the same interface.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tandem.errors import KVTransferError
from tandem.simulator.kv_connector import RemotePrefill

logger = logging.getLogger(__name__)

_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ReadReceipt:
    num_tokens: int
    num_bytes: int


class KVTransport(Protocol):
    """Consumer-side operations against a producer's held KV."""

    async def read(self, source: RemotePrefill) -> ReadReceipt: ...

    async def heartbeat(self, host: str, port: int, request_ids: list[str]) -> None: ...

    async def done(self, source: RemotePrefill) -> bool: ...


class SideChannelClient:
    """`KVTransport` over the JSON-lines side channel."""

    async def read(self, source: RemotePrefill) -> ReadReceipt:
        reply = await self._call(
            source.remote_host,
            source.remote_port,
            {
                "op": "read",
                "engine_id": source.remote_engine_id,
                "request_id": source.remote_request_id,
                "block_ids": list(source.remote_block_ids[0]),
            },
        )
        try:
            return ReadReceipt(int(reply["num_tokens"]), int(reply["num_bytes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise KVTransferError(
                f"producer {source.remote_host}:{source.remote_port} answered a read "
                f"without its sizes: {exc!r}"
            ) from exc

    async def heartbeat(self, host: str, port: int, request_ids: list[str]) -> None:
        await self._call(host, port, {"op": "heartbeat", "request_ids": request_ids})

    async def done(self, source: RemotePrefill) -> bool:
        reply = await self._call(
            source.remote_host,
            source.remote_port,
            {"op": "done", "request_id": source.remote_request_id},
        )
        return bool(reply.get("released"))

    async def _call(self, host: str, port: int, message: dict[str, Any]) -> dict[str, Any]:
        where = f"{host}:{port}"
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(json.dumps(message).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            raise KVTransferError(f"KV side channel {where} unreachable: {exc!r}") from exc
        if not line:
            raise KVTransferError(f"KV side channel {where} closed without answering")
        try:
            reply = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise KVTransferError(
                f"KV side channel {where} answered something other than its protocol: {exc!r}"
            ) from exc
        if not isinstance(reply, dict):
            raise KVTransferError(f"KV side channel {where} answered a non-object: {reply!r:.80}")
        if not reply.get("ok"):
            raise KVTransferError(f"producer {where}: {reply.get('error', 'unknown error')}")
        return reply


Handler = Callable[[dict[str, Any]], dict[str, Any]]


class SideChannelServer:
    """Producer-side listener; `handler` answers each decoded message."""

    def __init__(self, host: str, port: int, handler: Handler) -> None:
        self._host, self._port, self._handler = host, port, handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                reply = self._handler(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": f"malformed side-channel message: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.debug("side channel peer went away")
        finally:
            writer.close()
