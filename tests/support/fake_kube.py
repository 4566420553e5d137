"""A fake Kubernetes API server for pods: list and watch JSON on loopback.

It keeps pods and a numbered event history like the API server does, answers
`GET /api/v1/namespaces/{ns}/pods` as a list or, with `watch=true`, as a stream of watch
events (one JSON object per line) from the requested resourceVersion. Tests change pods
from their own thread; `expire_history()` makes older resource versions unresumable (the
server then sends a 410 `Expired` ERROR event, as a real API server does after compaction),
and `drop_watches()` breaks every open watch mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass(frozen=True, slots=True)
class ApiCall:
    namespace: str
    watch: bool
    label_selector: str | None
    resource_version: str | None


class DroppedConnection(Exception):
    """Raised inside a watch stream to cut the connection without finishing the response."""


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    """Equality-based selectors (`a=b,c=d`), which is what tandem's charts use."""
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


@dataclass
class FakeKubeAPI:
    namespace: str = "serving"
    calls: list[ApiCall] = field(default_factory=list)
    _pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    _history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    _version: int = 100
    _oldest_resumable: int = 0
    _drops: int = 0
    _down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what tests do --------------------------------------------------------------------

    def put_pod(
        self,
        name: str,
        *,
        ip: str | None = "127.0.0.1",
        ready: bool = True,
        labels: dict[str, str] | None = None,
        deleting: bool = False,
    ) -> None:
        """Create or update a pod."""
        with self._lock:
            self._version += 1
            metadata: dict[str, Any] = {
                "name": name,
                "namespace": self.namespace,
                "uid": f"uid-{name}",
                "resourceVersion": str(self._version),
                "labels": dict(labels or {}),
            }
            if deleting:
                metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            status: dict[str, Any] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            }
            if ip is not None:
                status["podIP"] = ip
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": status}
            kind = "MODIFIED" if name in self._pods else "ADDED"
            self._pods[name] = pod
            self._history.append((self._version, kind, pod))

    def delete_pod(self, name: str) -> None:
        with self._lock:
            pod = self._pods.pop(name)
            self._version += 1
            gone = {**pod, "metadata": {**pod["metadata"], "resourceVersion": str(self._version)}}
            self._history.append((self._version, "DELETED", gone))

    def expire_history(self) -> None:
        """Compact: watches from any version seen so far now get 410 Gone."""
        with self._lock:
            self._version += 1
            self._oldest_resumable = self._version

    def drop_watches(self) -> None:
        """Break every open watch connection."""
        with self._lock:
            self._drops += 1

    def go_down(self) -> None:
        """Break every connection and refuse new ones until `come_back` (so the server can
        stop without a watch holding it open)."""
        with self._lock:
            self._down = True
            self._drops += 1

    def come_back(self) -> None:
        with self._lock:
            self._down = False

    def lists(self) -> int:
        return sum(1 for call in self.calls if not call.watch)

    def watches(self) -> int:
        return sum(1 for call in self.calls if call.watch)

    # -- the server -----------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/v1/namespaces/{namespace}/pods")
        async def pods(namespace: str, request: Request) -> Any:
            params = request.query_params
            watch = params.get("watch") in ("true", "1", "True")
            selector = params.get("labelSelector")
            version = params.get("resourceVersion")
            if self._down:
                raise DroppedConnection
            self.calls.append(ApiCall(namespace, watch, selector, version))
            if not watch:
                return JSONResponse(self._list(namespace, selector))
            timeout = float(params.get("timeoutSeconds") or 300)
            return StreamingResponse(
                self._watch(namespace, selector, int(version or 0), timeout),
                media_type="application/json",
            )

        return app

    def _list(self, namespace: str, selector: str | None) -> dict[str, Any]:
        with self._lock:
            items = [
                pod
                for pod in self._pods.values()
                if namespace == self.namespace and _matches(pod["metadata"]["labels"], selector)
            ]
            version = str(self._version)
        return {
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    async def _watch(
        self, namespace: str, selector: str | None, since: int, timeout_s: float
    ) -> AsyncIterator[bytes]:
        with self._lock:
            drops = self._drops
            if since < self._oldest_resumable:
                expired = {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f"too old resource version: {since} ({self._oldest_resumable})",
                        "reason": "Expired",
                        "code": 410,
                    },
                }
                yield json.dumps(expired).encode() + b"\n"
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        sent = since
        while loop.time() < deadline:
            with self._lock:
                if self._drops != drops or self._down:
                    raise DroppedConnection
                fresh = [entry for entry in self._history if entry[0] > sent]
            for version, kind, pod in fresh:
                sent = version
                if namespace == self.namespace and _matches(pod["metadata"]["labels"], selector):
                    yield json.dumps({"type": kind, "object": pod}).encode() + b"\n"
            await asyncio.sleep(0.02)


def write_kubeconfig(path: Path, server: str, namespace: str = "serving") -> Path:
    """A kubeconfig whose current context is the fake server."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-checked"}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "tester", "namespace": namespace},
                    }
                ],
                "current-context": "fake",
            }
        )
    )
    return path
