"""`tandem up` in a subprocess: the whole deployment answers, and stops without leftovers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.support.processes import REPO_ROOT, TANDEM
from tests.support.schedulers import disaggregating_tandem
from tests.support.servers import cluster_base_port, free_port, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _children(pid: int) -> set[int]:
    """All descendants of a process, from /proc."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            for child in task.read_text().split():
                found.add(int(child))
                frontier.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def tandem_up(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    port, base_port = free_port(), cluster_base_port()
    argv = [*TANDEM, "up", "--port", str(port), "--base-port", str(base_port),
            "--run-dir", str(tmp_path / "run"), "--time-scale", "0.1", *args]  # fmt: skip
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:

            def ready() -> bool:
                if process.poll() is not None:
                    return True
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).is_success
                except httpx.TransportError:
                    return False

            assert wait_until(ready, timeout_s=60, interval_s=0.2), log.read_text()
            assert process.poll() is None, log.read_text()
            yield process, port, base_port
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.mark.parametrize("layout", [("--prefill", "1", "--decode", "1"), ("--aggregated", "2")])
def test_up_serves_and_stops_cleanly(tmp_path: Path, layout: tuple[str, ...]) -> None:
    scheduler = tmp_path / "scheduler.yaml"
    scheduler.write_text(yaml.safe_dump(disaggregating_tandem()))  # one request: idle pods
    with tandem_up(tmp_path, *layout, "--scheduler", str(scheduler)) as (
        process, port, base_port,
    ):  # fmt: skip
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        long_prompt = " ".join(["history"] * 2000)
        completion = client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4)
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        streamed = list(
            client.completions.create(model=MODEL, prompt="Stream it", max_tokens=3, stream=True)
        )
        if layout[0] == "--prefill":
            # prefill pod, decode vLLM, then the decode pod's sidecar: ports in that order.
            sidecar_metrics = httpx.get(f"http://127.0.0.1:{base_port + 2}/metrics").text
            assert 'tandem_sidecar_requests_total{mode="disaggregated"} 1.0' in sidecar_metrics
        children = _children(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 3
    assert sum(1 for chunk in streamed if chunk.choices and chunk.choices[0].text) == 3
    assert len(children) >= 3
    assert wait_until(lambda: not any(_alive(pid) for pid in children), timeout_s=10)
    assert _port_free(port)
    assert all(_port_free(base_port + offset) for offset in range(4))


def test_a_second_signal_while_stopping_kills_what_is_left_at_once(tmp_path: Path) -> None:
    with tandem_up(tmp_path, "--aggregated", "1") as (process, port, _):
        children = _children(process.pid)
        direct = sorted(
            int(child)
            for task in Path(f"/proc/{process.pid}/task").glob("*/children")
            for child in task.read_text().split()
        )
        os.kill(direct[0], signal.SIGSTOP)  # a child that will not stop by itself
        process.send_signal(signal.SIGTERM)
        # Stopping: the orchestrator, stopped first, is gone; the frozen child holds it up.
        assert wait_until(lambda: _port_free(port), timeout_s=10)
        assert process.poll() is None  # waiting for the child, up to its grace period
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0

    log = (tmp_path / "up.log").read_text()
    assert "Traceback" not in log
    assert wait_until(lambda: not any(_alive(pid) for pid in children), timeout_s=10)
