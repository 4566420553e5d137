"""Pods moving between the pools of a live local deployment: the orchestrator's rebalancer
sets a target split, `tandem up`'s mover drains a pod and restarts it in the other role, and
no request is lost while it does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tandem.cluster.local import LocalCluster
from tests.chaos.conftest import chaos_spec
from tests.chaos.load import MODEL, prompt
from tests.chaos.test_faults import REQUESTS, check, samples, under_load
from tests.support.servers import wait_until

pytestmark = pytest.mark.chaos

NEVER = 1e9


def elastic(tmp_path: Path, **rebalance: Any) -> LocalCluster:
    """2 prefill + 2 decode simulated pods, either pool allowed 1 to 3 of them."""
    spec = chaos_spec(
        rebalance={"prefill": {"max": 3}, "decode": {"max": 3}, "check_s": 0.5, **rebalance}
    )
    return LocalCluster(spec, tmp_path / "run")


@pytest.fixture
def still(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster whose rebalancer never asks for a move (the test moves a pod itself)."""
    with elastic(tmp_path, min_load=NEVER) as running:
        yield running


@pytest.fixture
def eager(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster whose rebalancer moves a decode pod to prefill at its first look (the
    decode pool may not grow), then never again."""
    with elastic(
        tmp_path, decode={"max": 2}, min_load=0, margin=0, sustain_s=0, interval_s=NEVER
    ) as running:
        yield running


def test_a_pod_moves_to_the_other_pool_under_load_and_nothing_is_lost(
    still: LocalCluster,
) -> None:
    mover = still.mover
    assert mover is not None

    result, _ = under_load(still, lambda: mover.request_move("prefill-1", "decode").result(60))

    [move] = mover.moves
    check("move a prefill pod to the decode pool", result, touched=1)
    assert result.count("completed") == REQUESTS, result.describe()
    assert (move.pod, move.new_pod) == ("prefill-1", "decode-2")
    assert still.serving() == {
        "prefill": ["prefill-0"],
        "decode": ["decode-0", "decode-1", "decode-2"],
    }
    # The orchestrator routes to the new pod; nothing of the old one runs.
    names = {component.name for component in still.all_components()}
    assert "prefill-1" not in names
    assert {"decode-2", "decode-2-vllm"} <= names
    counters = samples(still)
    assert counters["tandem_pool_replicas{pool=decode}"] == 3
    served = "vllm:request_success_total{finished_reason=length}"
    for index in range(30):  # distinct prompts, spread over the three decode pods
        body = {"model": MODEL, "prompt": prompt(100 + index, 40), "max_tokens": 4}
        assert httpx.post(f"{still.url}/v1/completions", json=body, timeout=30).status_code == 200
        if samples(still, "decode-2-vllm").get(served, 0) > 0:
            break
    assert samples(still, "decode-2-vllm")[served] > 0


def test_the_orchestrator_s_target_split_is_what_the_mover_makes(eager: LocalCluster) -> None:
    mover = eager.mover
    assert mover is not None

    assert wait_until(lambda: len(mover.moves) == 1, timeout_s=60, interval_s=0.25)

    # The first look finds every pod idle: moving a decode pod (drained by its sidecar's
    # count and its vLLM's) to prefill costs nothing.
    counters = samples(eager)
    moved = "tandem_pool_moves_total{reason=prefill_pool_busier,source=decode,target=prefill}"
    assert counters[moved] == 1
    assert counters["tandem_pool_target_replicas{pool=prefill}"] == 3
    assert counters["tandem_pool_target_replicas{pool=decode}"] == 1
    assert eager.serving() == {"prefill": ["prefill-0", "prefill-1", "prefill-2"],
                               "decode": ["decode-1"]}  # fmt: skip
    names = {component.name for component in eager.all_components()}
    assert "prefill-2" in names
    assert not names & {"decode-0", "decode-0-vllm"}  # the sidecar and its vLLM both stopped
    time.sleep(2.0)  # the interval holds: no second move
    assert len(mover.moves) == 1
