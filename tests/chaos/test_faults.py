"""Faults under load: no request is lost, and a request that no pod ever started is served
by another one. Each case: 40 streamed completions at 5 per second (half of them prompts
long enough to be prefilled on the prefill pool once the decode pods are busy), the fault
injected two seconds in."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tandem.cluster.local import LocalCluster
from tests.chaos.conftest import record
from tests.chaos.load import LoadResult, run_load
from tests.support.servers import parse_samples

pytestmark = pytest.mark.chaos

REQUESTS = 40
RATE = 5.0
FAULT_AT_S = 2.0


def under_load(cluster: LocalCluster, inject: Callable[[], object]) -> tuple[LoadResult, float]:
    """Run the load; `FAULT_AT_S` in, call `inject` (off the event loop: it may block).
    Returns the outcomes and when the fault began (seconds from the first request)."""

    async def main() -> tuple[LoadResult, float]:
        origin = time.monotonic()
        load = asyncio.create_task(
            run_load(cluster.url, requests=REQUESTS, rate=RATE, started=origin)
        )
        await asyncio.sleep(FAULT_AT_S)
        fault_at = time.monotonic() - origin
        await asyncio.get_running_loop().run_in_executor(None, inject)
        return await load, fault_at

    return asyncio.run(main())


def samples(cluster: LocalCluster, component: str | None = None) -> dict[str, float]:
    """A component's /metrics (the orchestrator's by default), keyed as in parse_samples."""
    if component is None:
        url = cluster.url
    else:
        port = next(c.port for c in cluster.all_components() if c.name == component)
        url = f"http://{cluster.spec.host}:{port}"
    return parse_samples(httpx.get(f"{url}/metrics", timeout=10).text)


def total(counters: dict[str, float], family: str) -> float:
    return sum(value for key, value in counters.items() if key.startswith(family + "{"))


def sidecar_recoveries(cluster: LocalCluster) -> int:
    """Prefills the sidecars moved to the next candidate or redid locally."""
    counted = 0.0
    for sidecar in ("decode-0", "decode-1"):
        counters = samples(cluster, sidecar)
        counted += total(counters, "tandem_sidecar_prefill_retries_total")
        counted += total(counters, "tandem_sidecar_fallbacks_total")
    return int(counted)


def check(case: str, result: LoadResult, touched: int, **extra: object) -> None:
    """Record the case's counts, `touched` being how many requests the fault reached."""
    record(case, {**result.counts(), "touched": touched, **extra})
    assert result.count("lost") == 0, result.describe()


def busy(cluster: LocalCluster, component: str) -> bool:
    counters = samples(cluster, component)
    return total(counters, "vllm:num_requests_running") > 0


def test_kill_a_prefill_pod(cluster: LocalCluster) -> None:
    def kill_while_prefilling() -> None:
        deadline = time.monotonic() + 5.0
        while not busy(cluster, "prefill-0") and time.monotonic() < deadline:
            time.sleep(0.02)
        cluster.kill("prefill-0")

    result, _ = under_load(cluster, kill_while_prefilling)
    touched = sidecar_recoveries(cluster)
    check("kill -9 a prefill pod", result, touched)
    # Its prefills in flight and its KV not yet read are redone elsewhere or locally.
    assert result.count("completed") == REQUESTS, result.describe()
    assert touched >= 1


@pytest.mark.parametrize(
    ("case", "component"),
    [("kill -9 a decode pod's vLLM", "decode-0-vllm"), ("kill -9 a sidecar", "decode-0")],
)
def test_kill_a_decode_pod_part(cluster: LocalCluster, case: str, component: str) -> None:
    result, fault_at = under_load(cluster, lambda: cluster.kill(component))
    not_started_failed = [
        o for o in result.outcomes if o.kind != "completed" and o.sent_at > fault_at + 0.05
    ]
    retried = int(total(samples(cluster), "tandem_upstream_errors_total"))
    touched = result.count("clear_error") + retried
    check(case, result, touched, not_started_failed=len(not_started_failed))
    # Streams the pod was decoding end with an error event; requests it never started are
    # retried on the other decode pod, so nothing sent after it died fails.
    assert not_started_failed == [], result.describe()
    assert result.count("completed") + result.count("clear_error") == REQUESTS
    assert touched >= 1


def test_restart_the_orchestrator(cluster: LocalCluster) -> None:
    result, _ = under_load(cluster, lambda: cluster.restart("orchestrator"))
    retried = sum(1 for o in result.outcomes if o.connect_retries)
    check("restart the orchestrator (SIGTERM, start again)", result, retried)
    # It drains what it was serving before it exits; clients retry while it is down.
    assert result.count("completed") == REQUESTS, result.describe()
    assert retried >= 1  # the restart did fall under load


def test_stall_a_kv_transfer(cluster: LocalCluster) -> None:
    def freeze_prefill_pod() -> None:
        cluster.signal("prefill-0", signal.SIGSTOP)
        time.sleep(6.0)
        cluster.signal("prefill-0", signal.SIGCONT)

    result, _ = under_load(cluster, freeze_prefill_pod)
    counters = samples(cluster)
    check("stall KV transfers (SIGSTOP a prefill pod for 6 s)", result, sidecar_recoveries(cluster))
    # Reads from the frozen producer time out and are recomputed; its prefills in flight
    # time out and go to the next candidate; scrapes time out and leave it out meanwhile.
    assert result.count("completed") == REQUESTS, result.describe()
    assert counters["tandem_scrape_errors_total{endpoint=prefill-0}"] >= 2


def test_stop_scrapes_of_a_decode_pod(cluster: LocalCluster) -> None:
    result, _ = under_load(cluster, lambda: cluster.signal("decode-0-vllm", signal.SIGUSR1))
    counters = samples(cluster)
    check(
        "stop scrapes of a decode pod (its /metrics hangs)", result,
        int(counters["tandem_scrape_errors_total{endpoint=decode-0}"]),
    )  # fmt: skip
    assert result.count("completed") == REQUESTS, result.describe()
    assert counters["tandem_endpoint_healthy{endpoint=decode-0}"] == 0
