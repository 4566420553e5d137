"""The unit tier opens no socket: tests/unit/conftest.py refuses them."""

from __future__ import annotations

import asyncio
import socket

import pytest
from pytest_socket import SocketBlockedError


def test_a_tcp_socket_is_refused() -> None:
    with pytest.warns(UserWarning, match="socket"), pytest.raises(SocketBlockedError):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def test_an_event_loop_still_runs() -> None:
    assert asyncio.run(asyncio.sleep(0, result="ran")) == "ran"
