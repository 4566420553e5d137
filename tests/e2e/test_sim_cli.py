"""`tandem sim` as a user runs it: a separate process, its exit codes and its HTTP surface."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tandem.costmodel.profiles import PROFILES
from tests.support.processes import REPO_ROOT, TANDEM, sim_process
from tests.support.servers import free_port, wait_until

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def run_tandem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TANDEM, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("prefill", ["vllm serve", "kv_producer", "--port 8000", "VLLM_NIXL_SIDE_CHANNEL_PORT"]),
        ("decode", ["vllm serve", "kv_consumer", "--port 8200", "VLLM_NIXL_SIDE_CHANNEL_PORT"]),
        ("both", ["vllm serve", "--port 8000"]),
    ],
)
def test_print_vllm_command_prints_the_real_command_line(role: str, expected: list[str]) -> None:
    result = run_tandem("sim", "--role", role, "--print-vllm-command")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    for fragment in expected:
        assert fragment in lines[0]
    if role == "both":
        assert "--kv-transfer-config" not in lines[0]
        assert "NixlConnector" not in lines[0]


def test_unknown_profile_exits_2_naming_the_valid_profiles() -> None:
    result = run_tandem("sim", "--profile", "nope")

    assert result.returncode == 2
    assert "nope" in result.stderr
    for name in PROFILES:
        assert name in result.stderr


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As a restarted server would bind: TIME_WAIT leftovers do not count, listeners do.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_decode_pod_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    with sim_process(log, "--role", "decode", "--time-scale", "0.05") as (process, port):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as client:
            health = client.get(f"{url}/health")
            version = client.get(f"{url}/version")
        with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10) as openai:
            completion = openai.completions.create(model=MODEL, prompt="hello", max_tokens=3)
            models = openai.models.list()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=20)

    assert health.status_code == 200
    assert version.json() == {"version": "0.33.0"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"
    assert [model.id for model in models.data] == [MODEL]
    assert returncode in (0, -signal.SIGTERM), log.read_text()
    assert port_is_free(port)


def test_sigusr1_stalls_metrics_until_the_next_one_while_the_pod_serves(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    with sim_process(log, "--time-scale", "0.05") as (process, port):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as client:
            before = client.get(f"{url}/metrics").status_code
            process.send_signal(signal.SIGUSR1)

            def stalled() -> bool:  # the signal is handled asynchronously
                try:
                    client.get(f"{url}/metrics", timeout=0.5)
                except httpx.ReadTimeout:
                    return True
                return False

            assert wait_until(stalled, timeout_s=10), log.read_text()
            serving = client.post(
                f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
            ).status_code
            process.send_signal(signal.SIGUSR1)
            after = client.get(f"{url}/metrics", timeout=5).status_code

    assert (before, serving, after) == (200, 200, 200)


def documented_block(page: Path, heading: str) -> str:
    """The first ```bash block after `heading` in a Markdown page."""
    section = page.read_text().split(heading, 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def test_the_documented_pd_round_trip_runs_as_written(tmp_path: Path) -> None:
    """docs/simulator.md's round trip by hand, as a user pastes it (on free ports, with this
    Python's tandem): the decode pod takes the whole prompt over the KV transfer."""
    script = documented_block(REPO_ROOT / "docs" / "simulator.md", "### A P/D round trip by hand")
    for port in ("8100", "8200", "5601", "5602"):
        script = re.sub(rf"\b{port}\b", str(free_port()), script)
    script = script.replace(".venv/bin/tandem", " ".join(TANDEM))
    stop_pods_on_exit = "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n"

    result = subprocess.run(
        ["bash", "-c", stop_pods_on_exit + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    text, usage, metric = result.stdout.strip().splitlines()[-3:]
    assert json.loads(text).strip()
    prompt_tokens = json.loads(usage)["prompt_tokens"]
    assert metric.startswith("vllm:prompt_tokens_by_source_total{")
    assert float(metric.split()[-1]) == prompt_tokens > 0
    assert json.loads((tmp_path / "params.json").read_text())["do_remote_prefill"] is True


def test_a_pod_publishes_no_kv_events_unless_asked() -> None:
    """As `vllm serve`: the pool definitions' events are what `tandem up` and the charts ask
    for, not a default of the command."""
    plain = run_tandem("sim", "--role", "prefill", "--print-vllm-command")
    asked = run_tandem(
        "sim", "--role", "prefill", "--print-vllm-command",
        "--kv-events-config", '{"enable_kv_cache_events": true}',
    )  # fmt: skip

    assert "--kv-events-config" not in plain.stdout
    assert "--kv-events-config '{\"enable_kv_cache_events\": true}'" in asked.stdout
