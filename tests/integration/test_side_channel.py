"""A consumer's KV read from a producer that answers badly fails with a reason, never hangs
and never escapes as another exception (the request then ends under the load policy)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tandem.errors import KVTransferError
from tandem.simulator.kv_connector import RemotePrefill
from tandem.simulator.transfer import SideChannelClient

ANSWERS = {
    "an HTTP answer": b"HTTP/1.1 400 Bad Request\r\n\r\n",
    "a JSON array": b"[1, 2]\n",
    "a read without its sizes": b'{"ok": true}\n',
    "sizes that are not numbers": b'{"ok": true, "num_tokens": "many", "num_bytes": 1}\n',
    "nothing": b"",
    "an error": b'{"ok": false, "error": "no such request"}\n',
}


@asynccontextmanager
async def producer(answer: bytes) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def source(port: int) -> RemotePrefill:
    parsed = RemotePrefill.parse(
        {
            "do_remote_prefill": True,
            "remote_block_ids": [[1, 2]],
            "remote_engine_id": "producer",
            "remote_request_id": "cmpl-held-0",
            "remote_host": "127.0.0.1",
            "remote_port": port,
        }
    )
    assert parsed is not None
    return parsed


@pytest.mark.parametrize("case", list(ANSWERS))
async def test_a_bad_answer_to_a_read_is_a_transfer_error(case: str) -> None:
    async with producer(ANSWERS[case]) as port:
        with pytest.raises(KVTransferError, match=r"127\.0\.0\.1"):
            await asyncio.wait_for(SideChannelClient().read(source(port)), timeout=5)
