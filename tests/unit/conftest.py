"""Unit tests are pure: they open no socket (a test that needs a server, or a peer on
loopback, belongs in tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_socket import disable_socket, enable_socket


@pytest.fixture(autouse=True)
def _no_sockets() -> Iterator[None]:
    # Unix sockets stay allowed: an asyncio event loop wakes itself over a socket pair.
    disable_socket(allow_unix_socket=True)
    yield
    enable_socket()
