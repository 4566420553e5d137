"""Failure injection on a live simulated pod: errors, hangs, slow starts, latency, crashes."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from tandem.simulator.faults import FAULT_ERRORS, FaultConfig
from tandem.simulator.server import create_app
from tests.support.processes import sim_process
from tests.support.servers import pod_config, running_pod, scrape, wait_until

COMPLETION = {"prompt": "hello there", "max_tokens": 2}


def status_of(client: httpx.Client, url: str) -> int:
    return client.post(f"{url}/v1/completions", json=COMPLETION).status_code


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/completions", COMPLETION),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ],
    ids=["completions", "chat"],
)
@pytest.mark.parametrize("status", [503, 429, 500, 504])
def test_every_request_gets_the_injected_error(
    status: int, route: str, body: dict[str, object]
) -> None:
    config = pod_config(time_scale=0.05, faults=FaultConfig(error_rate=1.0, error_codes=(status,)))
    with running_pod(config) as url, httpx.Client(timeout=10) as client:
        replies = [client.post(f"{url}{route}", json=body) for _ in range(3)]
        health = client.get(f"{url}/health")
        samples = scrape(url)

    kind, message = FAULT_ERRORS[status]
    for reply in replies:
        assert reply.status_code == status
        assert reply.json() == {
            "error": {"message": message, "type": kind, "param": None, "code": status}
        }
    assert health.status_code == 200
    # Injected errors never reach the engine.
    assert samples["vllm:request_success_total{finished_reason=length}"] == 0
    assert samples["vllm:request_success_total{finished_reason=stop}"] == 0


def statuses_for_seed(seed: int, num_requests: int = 40) -> list[int]:
    faults = FaultConfig(error_rate=0.5, error_codes=(503, 429), seed=seed)
    config = pod_config(time_scale=0.01, faults=faults)
    with running_pod(config) as url, httpx.Client(timeout=10) as client:
        return [status_of(client, url) for _ in range(num_requests)]


def test_half_error_rate_fails_some_requests_deterministically_for_the_seed() -> None:
    first = statuses_for_seed(seed=7)
    again = statuses_for_seed(seed=7)
    other = statuses_for_seed(seed=8)

    assert set(first) <= {200, 503, 429}
    assert 0 < first.count(200) < len(first)
    assert first.count(503) > 0
    assert first.count(429) > 0
    assert again == first
    assert other != first


def test_the_port_refuses_connections_until_the_ready_delay_has_passed() -> None:
    # vLLM starts listening only once its engine is up: until then a client is refused.
    config = pod_config(time_scale=0.05, faults=FaultConfig(ready_delay_s=1.5))
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    try:
        with httpx.Client(timeout=10) as client:
            with pytest.raises(httpx.ConnectError):
                client.get(f"{url}/health")
            became_ready = wait_until(lambda: _health(client, url) == 200, timeout_s=10)
    finally:
        server.should_exit = True
        thread.join(timeout=20)

    assert became_ready


def _health(client: httpx.Client, url: str) -> int | None:
    try:
        return client.get(f"{url}/health").status_code
    except httpx.ConnectError:
        return None


def test_hung_request_times_out_and_leaves_nothing_behind() -> None:
    config = pod_config(time_scale=0.05, faults=FaultConfig(hang_rate=1.0))
    with running_pod(config) as url, ThreadPoolExecutor(max_workers=1) as pool:

        def load() -> int:
            server_load: int = httpx.get(f"{url}/load", timeout=10).json()["server_load"]
            return server_load

        def hung_request() -> None:
            with httpx.Client(timeout=httpx.Timeout(10, read=1.0)) as client:
                client.post(f"{url}/v1/completions", json=COMPLETION)

        pending = pool.submit(hung_request)
        counted_while_hanging = wait_until(lambda: load() == 1, timeout_s=5)
        with pytest.raises(httpx.ReadTimeout):
            pending.result(timeout=20)
        released = wait_until(lambda: load() == 0, timeout_s=10)
        samples = scrape(url)
        health = httpx.get(f"{url}/health", timeout=10)

    assert counted_while_hanging
    assert released
    assert samples["vllm:num_requests_running{}"] == 0
    assert samples["vllm:num_requests_waiting{}"] == 0
    assert samples["vllm:request_success_total{finished_reason=abort}"] == 0
    assert health.status_code == 200


@pytest.mark.parametrize("latency_s", [0.2])
def test_added_latency_still_answers(latency_s: float) -> None:
    config = pod_config(time_scale=0.05, faults=FaultConfig(added_latency_s=latency_s))
    with running_pod(config) as url, httpx.Client(timeout=10) as client:
        reply = client.post(f"{url}/v1/completions", json=COMPLETION)

    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 2


def test_crash_after_exits_the_process_on_the_nth_request(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    with sim_process(log, "--time-scale", "0.05", "--fault-crash-after", "2") as (process, port):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as client:
            first = client.post(f"{url}/v1/completions", json=COMPLETION)
            with pytest.raises(httpx.TransportError):
                client.post(f"{url}/v1/completions", json=COMPLETION)
        returncode = process.wait(timeout=10)

    assert first.status_code == 200
    assert returncode != 0, log.read_text()
    assert "injected_crash" in log.read_text()
