"""`tandem up --engine vllm` as a user runs it: the README's curl and the `openai` client get
answers through the P/D path, and Ctrl-C leaves no process and no port behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from openai import OpenAI

from tests.real.conftest import REQUEST_TIMEOUT_S, warm_up_pd
from tests.support.pd import MODEL, samples, words
from tests.support.servers import free_port, wait_until

BASE_PORT = 24000


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment carries `marker`: the launcher's whole tree, whatever
    process group or session each child moved to."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"TANDEM_TEST_RUN={marker}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_through_pd_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    port, marker = free_port(), uuid.uuid4().hex
    argv = [
        sys.executable, "-m", "tandem", "up", "--engine", "vllm",
        "--prefill", "1", "--decode", "1", "--scheduler", "token-load",
        "--port", str(port), "--base-port", str(BASE_PORT), "--run-dir", str(tmp_path),
    ]  # fmt: skip
    up = subprocess.Popen(
        argv,
        env={**os.environ, "TANDEM_TEST_RUN": marker},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own terminal-like group, for the Ctrl-C below
    )
    url = f"http://127.0.0.1:{port}"
    pod_ports = [BASE_PORT, BASE_PORT + 1, BASE_PORT + 2]  # prefill, decode vLLM, sidecar
    try:

        def ready() -> bool:
            assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
            try:
                return httpx.get(f"{url}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, timeout_s=400, interval_s=1)
        readme = httpx.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": "Hello", "max_tokens": 8},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert readme.status_code == 200, readme.text
        assert readme.json()["usage"]["completion_tokens"] == 8

        warm_up_pd(f"http://127.0.0.1:{BASE_PORT}", f"http://127.0.0.1:{BASE_PORT + 1}")
        sidecar = f"http://127.0.0.1:{BASE_PORT + 2}"
        before = samples(sidecar)
        chat = OpenAI(
            base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
        ).chat
        answer = chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": words(800)}], max_tokens=8
        )
        assert answer.choices[0].message.content
        disaggregated = "tandem_sidecar_requests_total{mode=disaggregated}"
        assert samples(sidecar).get(disaggregated, 0) - before.get(disaggregated, 0) == 1
        assert all(listening(p) for p in (*pod_ports, port))
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        up.wait(timeout=60)

    assert up.returncode == 0
    assert wait_until(lambda: not marked_processes(marker), timeout_s=20, interval_s=0.5)
    assert not any(listening(p) for p in (*pod_ports, port))
