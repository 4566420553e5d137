"""Where the simulated pod's KV event publisher binds: vLLM's endpoints, with a wildcard host
bound to the address the pod serves on."""

from __future__ import annotations

import pytest

from tandem.simulator.kv_events import bind_address


@pytest.mark.parametrize(
    ("endpoint", "host", "bound"),
    [
        ("tcp://*:5557", "127.0.0.1", "tcp://127.0.0.1:5557"),
        ("tcp://*:5557", "::1", "tcp://[::1]:5557"),
        ("tcp://*:5557", "0.0.0.0", "tcp://*:5557"),
        ("tcp://*:5557", None, "tcp://*:5557"),
        ("tcp://127.0.0.3:5557", "127.0.0.1", "tcp://127.0.0.3:5557"),
        ("ipc:///tmp/kv-events", "127.0.0.1", "ipc:///tmp/kv-events"),
    ],
)
def test_a_wildcard_binds_the_pods_own_address(endpoint: str, host: str | None, bound: str) -> None:
    assert bind_address(endpoint, host) == bound
