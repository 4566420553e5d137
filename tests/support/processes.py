"""Run `tandem` commands as real subprocesses for end-to-end and crash tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.servers import free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
TANDEM = [sys.executable, "-m", "tandem"]


@contextmanager
def sim_process(log: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`tandem sim` on free ports, serving; killed if still running when the block ends.

    Its output goes to `log`, which failed assertions show."""
    port = free_port()
    argv = [*TANDEM, "sim", "--port", str(port), "--side-channel-port", str(free_port()), *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:

            def ready() -> bool:
                if process.poll() is not None:
                    return True  # exited: stop polling, the assertion below reports it
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success
                except httpx.TransportError:
                    return False

            assert wait_until(ready, timeout_s=30, interval_s=0.1), log.read_text()
            assert process.poll() is None, log.read_text()
            yield process, port
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
