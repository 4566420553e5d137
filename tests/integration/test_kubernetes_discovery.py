"""Kubernetes discovery with the real `kubernetes` client against a fake API server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
from kubernetes import client as k8s

from tandem.discovery.config import KubernetesDiscoveryConfig
from tandem.discovery.endpoints import Endpoint
from tandem.discovery.kubernetes import KubernetesEndpoints, pod_endpoint
from tests.support.fake_kube import FakeKubeAPI
from tests.support.servers import free_port, serve

SELECTOR = "llm-d.ai/model=llama-8b"
PREFILL = {"llm-d.ai/model": "llama-8b", "llm-d.ai/role": "prefill"}
DECODE = {"llm-d.ai/model": "llama-8b", "llm-d.ai/role": "decode"}


class Seen:
    """The endpoint sets discovery published, in order."""

    def __init__(self) -> None:
        self.sets: list[list[Endpoint]] = []

    def __call__(self, endpoints: Sequence[Endpoint]) -> None:
        self.sets.append(list(endpoints))

    def names(self) -> list[str]:
        return [e.name for e in self.sets[-1]] if self.sets else []

    async def until(self, names: list[str], timeout_s: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.names() != names:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"endpoints {self.names()} never became {names}")
            await asyncio.sleep(0.02)


@contextmanager
def fake_api(api: FakeKubeAPI, port: int | None = None) -> Iterator[str]:
    with serve(api.app(), port or free_port()) as url:
        yield url


def discovery(url: str, **overrides: object) -> KubernetesEndpoints:
    configuration = k8s.Configuration()
    configuration.host = url
    config = KubernetesDiscoveryConfig.model_validate(
        {"selector": SELECTOR, "namespace": "serving", "port": 8000,
         "backoff_initial_s": 0.05, "backoff_max_s": 0.2, **overrides}
    )  # fmt: skip
    return KubernetesEndpoints(config, client=k8s.ApiClient(configuration))


@contextmanager
def running(source: KubernetesEndpoints, seen: Seen) -> Iterator[asyncio.Task[None]]:
    task = asyncio.get_event_loop().create_task(source.run(seen))
    try:
        yield task
    finally:
        task.cancel()


@pytest.fixture
def api() -> FakeKubeAPI:
    return FakeKubeAPI(namespace="serving")


async def test_lists_ready_pods_with_an_ip_as_endpoints(api: FakeKubeAPI) -> None:
    api.put_pod("prefill-a", ip="127.0.0.1", labels=PREFILL)
    api.put_pod("decode-a", ip="127.0.0.2", labels=DECODE)
    api.put_pod("decode-starting", ip="127.0.0.3", ready=False, labels=DECODE)
    api.put_pod("decode-pending", ip=None, labels=DECODE)
    api.put_pod("other-model", ip="127.0.0.9", labels={"llm-d.ai/model": "other"})
    seen = Seen()

    with fake_api(api) as url, running(discovery(url), seen):
        await seen.until(["decode-a", "prefill-a"])

    endpoints = {e.name: e for e in seen.sets[-1]}
    assert endpoints["prefill-a"].address == "127.0.0.1:8000"
    assert endpoints["prefill-a"].role == "prefill"
    assert endpoints["decode-a"].role == "decode"
    first_list = api.calls[0]
    assert (first_list.namespace, first_list.label_selector) == ("serving", SELECTOR)
    assert not first_list.watch


async def test_ready_not_ready_and_deleted_pods_change_the_set(api: FakeKubeAPI) -> None:
    api.put_pod("decode-a", ip="127.0.0.2", labels=DECODE)
    seen = Seen()

    with fake_api(api) as url, running(discovery(url), seen):
        await seen.until(["decode-a"])
        api.put_pod("decode-b", ip="127.0.0.3", ready=False, labels=DECODE)
        api.put_pod("decode-b", ip="127.0.0.3", ready=True, labels=DECODE)
        await seen.until(["decode-a", "decode-b"])
        api.put_pod("decode-a", ip="127.0.0.2", ready=False, labels=DECODE)
        await seen.until(["decode-b"])
        api.put_pod("decode-b", ip="127.0.0.3", labels=DECODE, deleting=True)
        await seen.until([])
        api.put_pod("decode-c", ip="127.0.0.4", labels=DECODE)
        await seen.until(["decode-c"])
        api.delete_pod("decode-c")
        await seen.until([])

    assert api.lists() == 1  # every change came over the watch
    watch = next(call for call in api.calls if call.watch)
    assert watch.resource_version is not None
    assert watch.label_selector == SELECTOR


async def test_a_moved_pod_keeps_its_name_with_the_new_address(api: FakeKubeAPI) -> None:
    api.put_pod("decode-a", ip="127.0.0.2", labels=DECODE)
    seen = Seen()

    with fake_api(api) as url, running(discovery(url), seen):
        await seen.until(["decode-a"])
        api.put_pod("decode-a", ip="127.0.0.7", labels=DECODE)
        for _ in range(200):
            if seen.sets[-1][0].host == "127.0.0.7":
                break
            await asyncio.sleep(0.02)

    assert seen.sets[-1][0].address == "127.0.0.7:8000"


async def test_410_gone_on_the_watch_relists(api: FakeKubeAPI) -> None:
    api.put_pod("decode-a", ip="127.0.0.2", labels=DECODE)
    seen = Seen()

    with fake_api(api) as url, running(discovery(url), seen):
        await seen.until(["decode-a"])
        # The watch's version becomes too old; a change made meanwhile must still arrive.
        api.drop_watches()
        api.put_pod("decode-b", ip="127.0.0.3", labels=DECODE)
        api.expire_history()
        await seen.until(["decode-a", "decode-b"])

    assert api.lists() >= 2
    relist = [call for call in api.calls if not call.watch][1]
    assert relist.label_selector == SELECTOR


async def test_a_dropped_watch_resumes_from_where_it_was(api: FakeKubeAPI) -> None:
    api.put_pod("decode-a", ip="127.0.0.2", labels=DECODE)
    seen = Seen()

    with fake_api(api) as url, running(discovery(url), seen):
        await seen.until(["decode-a"])
        api.drop_watches()
        api.put_pod("decode-b", ip="127.0.0.3", labels=DECODE)
        await seen.until(["decode-a", "decode-b"])

    assert api.lists() == 1  # resumed the watch, no relist
    resumed = [call for call in api.calls if call.watch][-1]
    assert resumed.resource_version is not None
    assert int(resumed.resource_version) > 100


async def test_an_api_server_outage_is_survived_with_backoff(api: FakeKubeAPI) -> None:
    port = free_port()
    api.put_pod("decode-a", ip="127.0.0.2", labels=DECODE)
    seen = Seen()
    source = discovery(f"http://127.0.0.1:{port}")

    with running(source, seen):
        await asyncio.sleep(0.5)  # nothing listens yet: connection refused, backing off
        assert seen.sets == []
        with fake_api(api, port):
            await seen.until(["decode-a"])
            api.go_down()  # the server goes away and takes the open watch with it
        # The last known set stays while the server is away.
        api.put_pod("decode-b", ip="127.0.0.3", labels=DECODE)
        await asyncio.sleep(0.3)
        assert seen.names() == ["decode-a"]
        api.come_back()
        with fake_api(api, port):
            await seen.until(["decode-a", "decode-b"])


async def test_stopping_discovery_ends_the_task(api: FakeKubeAPI) -> None:
    seen = Seen()
    with fake_api(api) as url:
        task = asyncio.get_running_loop().create_task(discovery(url).run(seen))
        await seen.until([])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("pod", "why"),
    [
        ({"metadata": {"name": "p"}, "status": {"podIP": "127.0.0.1"}}, "no Ready condition"),
        (
            {"metadata": {"name": "p"},
             "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            "no IP",
        ),
        (
            {"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"},
             "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}},
            "terminating",
        ),
        (
            {"metadata": {"name": "p"},
             "status": {"podIP": "127.0.0.1",
                        "conditions": [{"type": "Ready", "status": "False"}]}},
            "not ready",
        ),
    ],
)  # fmt: skip
def test_pods_that_cannot_serve_are_no_endpoint(pod: dict[str, object], why: str) -> None:
    assert pod_endpoint(pod, 8000) is None, why


def test_a_ready_pod_is_an_endpoint_with_its_labels() -> None:
    pod = {
        "metadata": {"name": "p", "labels": {"llm-d.ai/role": "decode"}},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }

    assert pod_endpoint(pod, 8000) == Endpoint("p", "127.0.0.1", 8000, {"llm-d.ai/role": "decode"})


def test_namespace_defaults_to_the_service_account_one(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from tandem.discovery import kubernetes as discovery

    assert isinstance(tmp_path, Path)
    file = tmp_path / "namespace"
    file.write_text("serving-ns\n")
    monkeypatch.setattr(discovery, "SERVICE_ACCOUNT_NAMESPACE", file)
    config = KubernetesDiscoveryConfig(selector=SELECTOR)

    assert discovery.resolve_namespace(config) == "serving-ns"
    monkeypatch.setattr(discovery, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "none")
    assert discovery.resolve_namespace(config) == "default"
