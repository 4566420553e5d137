"""Kubernetes endpoint discovery: list and watch pods by label selector in one namespace.

An endpoint exists while its pod is Ready, has an IP and is not being deleted; its name is
the pod's name and its labels (`llm-d.ai/role` among them) are the pod's. The loop follows
the API's list-then-watch contract (kubernetes.io/docs/reference/using-api/api-concepts,
"Efficient detection of changes"):

* list, remember the list's resourceVersion, watch from it with bookmarks;
* a watch that ends (server timeout) resumes from the last resourceVersion seen;
* `410 Gone` (the version is too old to resume from) relists;
* a lost connection or any other API error waits with capped exponential backoff and jitter,
  then resumes the watch (or relists, when nothing was listed yet).

The `kubernetes` client is synchronous, so the loop runs in a worker thread and hands every
changed endpoint set to the event loop. Both the orchestrator's pools and the sidecar's
prefill allowlist use this source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from tandem.discovery.config import KubernetesDiscoveryConfig
from tandem.discovery.endpoints import Endpoint
from tandem.logs import EventLog

logger = EventLog("tandem.discovery")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""Where a pod finds its own namespace (the service account's mounted token volume)."""
HTTP_GONE = 410


def resolve_namespace(config: KubernetesDiscoveryConfig) -> str:
    """The configured namespace, else the pod's own (in a cluster), else the kubeconfig
    context's, else `default` (kubectl's order)."""
    if config.namespace:
        return config.namespace
    if config.kubeconfig is None:
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        except OSError:
            pass
    try:
        _, active = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=config.kubeconfig
        )
    except (k8s_config.ConfigException, OSError, ValueError):
        return "default"
    namespace = ((active or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def pod_endpoint(pod: dict[str, Any], port: int) -> Endpoint | None:
    """The endpoint a pod stands for, or None while it cannot serve."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    name, ip = metadata.get("name"), status.get("podIP")
    if not name or not ip or metadata.get("deletionTimestamp"):
        return None
    ready = any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or ()
    )
    if not ready:
        return None
    return Endpoint(name, ip, port, dict(metadata.get("labels") or {}))


def api_client(config: KubernetesDiscoveryConfig) -> k8s.ApiClient:
    """An API client from the configured kubeconfig, the in-cluster account, or ~/.kube."""
    if config.kubeconfig is not None:
        from_file: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=config.kubeconfig
        )
        return from_file
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        default: k8s.ApiClient = k8s_config.new_client_from_config()  # type: ignore[no-untyped-call]
        return default
    return k8s.ApiClient()


class KubernetesEndpoints:
    """An `EndpointSource` backed by the Kubernetes API."""

    def __init__(
        self,
        config: KubernetesDiscoveryConfig,
        *,
        client: k8s.ApiClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.namespace = resolve_namespace(config)
        self._client = client
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._pods: dict[str, dict[str, Any]] = {}
        self._published: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] | None = None

    async def run(self, on_change: Callable[[Sequence[Endpoint]], None]) -> None:
        loop = asyncio.get_running_loop()

        def publish(endpoints: Sequence[Endpoint]) -> None:
            loop.call_soon_threadsafe(on_change, endpoints)

        finished: asyncio.Future[None] = loop.create_future()

        def work() -> None:
            try:
                self._loop(publish)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    loop.call_soon_threadsafe(_settle, finished)

        # A daemon thread, not the default executor: a watch blocks until its server-side
        # timeout, and the event loop's shutdown must not wait for it.
        threading.Thread(target=work, name="k8s-discovery", daemon=True).start()
        try:
            await finished
        finally:
            self._stop.set()

    # -- the worker thread ----------------------------------------------------------------

    def _loop(self, publish: Callable[[Sequence[Endpoint]], None]) -> None:
        client = self._client or api_client(self.config)
        api = k8s.CoreV1Api(client)
        version: str | None = None
        delay = self.config.backoff_initial_s
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(api, publish)
                version = self._watch(api, version, publish)
                delay = self.config.backoff_initial_s
            except ApiException as exc:
                if exc.status == HTTP_GONE:
                    logger.info("discovery_relist", reason=repr(exc.reason))
                    version = None
                    continue
                logger.warning("discovery_api_error", status=exc.status, reason=repr(exc.reason))
                delay = self._backoff(delay)
            except Exception as exc:
                # Connection refused or reset, timeouts, truncated streams: resume after a
                # pause. The endpoint set stays as last seen meanwhile.
                logger.warning("discovery_connection_error", error=repr(exc))
                delay = self._backoff(delay)

    def _backoff(self, delay: float) -> float:
        self._stop.wait(delay * (0.5 + self._rng.random() / 2))
        return min(delay * 2, self.config.backoff_max_s)

    def _list(self, api: k8s.CoreV1Api, publish: Callable[[Sequence[Endpoint]], None]) -> str:
        response: Any = api.list_namespaced_pod(
            self.namespace,
            label_selector=self.config.selector,
            _preload_content=False,
            _request_timeout=(5, 30),
        )
        document = json.loads(response.data)
        self._pods = {
            pod["metadata"]["name"]: pod
            for pod in document.get("items") or ()
            if (pod.get("metadata") or {}).get("name")
        }
        self._publish(publish)
        version: str = (document.get("metadata") or {}).get("resourceVersion") or ""
        return version

    def _watch(
        self, api: k8s.CoreV1Api, version: str, publish: Callable[[Sequence[Endpoint]], None]
    ) -> str:
        """Follow changes from `version` until the watch ends; returns the last version."""
        stream = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        timeout = self.config.watch_timeout_s
        events = stream.stream(  # type: ignore[no-untyped-call]
            api.list_namespaced_pod,
            self.namespace,
            label_selector=self.config.selector,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(5, timeout + 30),
        )
        try:
            for event in events:
                pod: dict[str, Any] = event["raw_object"]
                metadata = pod.get("metadata") or {}
                version = metadata.get("resourceVersion") or version
                name = metadata.get("name")
                if event["type"] == "BOOKMARK" or not name:
                    continue
                if event["type"] == "DELETED":
                    self._pods.pop(name, None)
                else:
                    self._pods[name] = pod
                self._publish(publish)
                if self._stop.is_set():
                    break
        finally:
            stream.stop()  # type: ignore[no-untyped-call]
        return version

    def _publish(self, publish: Callable[[Sequence[Endpoint]], None]) -> None:
        endpoints = [
            endpoint
            for pod in self._pods.values()
            if (endpoint := pod_endpoint(pod, self.config.port)) is not None
        ]
        endpoints.sort(key=lambda e: e.name)
        current = tuple((e.name, e.address, tuple(sorted(e.labels.items()))) for e in endpoints)
        if current != self._published:
            self._published = current
            publish(endpoints)
