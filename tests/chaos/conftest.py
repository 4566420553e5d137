"""Chaos tests: a local deployment (2 prefill + 2 decode simulated pods, their sidecars and
the orchestrator, each its own process on loopback) under load while a fault is injected.

Every case sends a bounded number of requests and counts how each ended; the counts of the
session are written to `.tandem/chaos/results.json` (`TANDEM_CHAOS_DIR` moves it) and
printed at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tandem.cluster.local import LocalCluster
from tandem.cluster.topology import ClusterSpec
from tests.support.servers import cluster_base_port, free_port

RESULTS: dict[str, dict[str, Any]] = {}

TIME_SCALE = 5.0
"""Model time runs five times slower than wall time: a 40-token answer streams for about a
second, so faults land on requests in flight."""


def chaos_dir() -> Path:
    return Path(os.environ.get("TANDEM_CHAOS_DIR", ".tandem/chaos"))


def chaos_spec(**fields: Any) -> ClusterSpec:
    """2 prefill + 2 decode simulated pods on free loopback ports, at `TIME_SCALE`."""
    return ClusterSpec(
        prefill=2,
        decode=2,
        time_scale=TIME_SCALE,
        port=free_port(),
        # Pods and side channels (base + 1000) below the ephemeral range free ports come from.
        base_port=cluster_base_port(),
        seed=3,
        **fields,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh local P/D deployment on free loopback ports."""
    # A prefill pod that stops answering is given up on after 5 s, not 2 minutes.
    spec = chaos_spec(sidecar_args=("--prefill-timeout", "5"))
    with LocalCluster(spec, tmp_path / "run") as running:
        yield running


def record(case: str, counts: dict[str, Any]) -> None:
    RESULTS[case] = counts


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    folder = chaos_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    columns = ("sent", "completed", "clear_errors", "lost", "touched")
    terminalreporter.write_sep("-", "chaos: how every request ended")
    terminalreporter.write_line("| case | " + " | ".join(columns) + " |")
    for case, counts in RESULTS.items():
        cells = " | ".join(str(counts.get(column, "")) for column in columns)
        terminalreporter.write_line(f"| {case} | {cells} |")
    terminalreporter.write_line(f"written to {folder / 'results.json'}")
