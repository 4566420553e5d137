"""Waiting for a service to answer: poll until a probe succeeds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tandem.errors import StartupError

POLL_INTERVAL_S = 0.1


def wait_ready(
    probe: Callable[[], httpx.Response],
    what: str,
    *,
    timeout_s: float,
    check_alive: Callable[[], None] | None = None,
) -> None:
    """Return once `probe()` answers 2xx; raise `StartupError` naming `what` after
    `timeout_s`. `check_alive` runs before each try and raises when waiting is pointless
    (the process behind the service has exited)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check_alive is not None:
            check_alive()
        try:
            if probe().is_success:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise StartupError(f"{what} not ready after {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)
