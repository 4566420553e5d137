"""Rendering tandem's Helm charts with Helm itself (helm-python), offline, once per module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

CHARTS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm"
CHART_NAMES = ("tandem-prefill", "tandem-decode", "tandem-orchestrator")
RELEASE = "llama"
NAMESPACE = "serving"
KUBE_VERSION = "1.33.0"
SERVING_NAME = "llama-8b"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

TLS_SECRET = "llama-tls"
"""The Secret with the certificates in the tls scenario."""
OTLP_ENV = {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://127.0.0.1:4318"}
OTLP_GRPC = "http://127.0.0.1:4317"
"""Where a release sends its spans in the tracing scenario (tandem's over OTLP/HTTP, vLLM's
over OTLP/gRPC)."""

REQUIRED: dict[str, dict[str, Any]] = {
    "tandem-prefill": {"servingName": SERVING_NAME, "model": MODEL},
    "tandem-decode": {"servingName": SERVING_NAME, "model": MODEL},
    "tandem-orchestrator": {"servingName": SERVING_NAME},
}
"""The values a user must give: without them the schema refuses the release."""

SCENARIOS: dict[str, dict[str, dict[str, Any]]] = {
    "defaults": {},
    "pd-ratio": {
        "tandem-prefill": {"replicas": 3},
        "tandem-decode": {"replicas": 5},
        "tandem-orchestrator": {"model": MODEL},
    },
    "tp4": {
        chart: {
            "model": "meta-llama/Llama-3.1-70B-Instruct",
            "servedModelName": "llama-70b",
            "tensorParallelSize": 4,
            "gpusPerPod": 4,
            "gpuMemoryUtilization": 0.92,
            "maxModelLen": 32768,
            "extraArgs": ["--max-num-seqs", "256"],
            "extraEnv": [{"name": "NCCL_DEBUG", "value": "INFO"}],
            "kv": {"loadFailurePolicy": "recompute", "ucxTls": "rc,cuda_ipc,cuda_copy"},
            "resources": {"requests": {"cpu": "16", "memory": "256Gi"}},
            "shm": {"sizeLimit": "32Gi"},
        }
        for chart in ("tandem-prefill", "tandem-decode")
    },
    "simulated": {
        chart: {"simulated": True, "simulatedProfile": "qwen3-32b-h100-tp2"}
        for chart in ("tandem-prefill", "tandem-decode")
    },
    "inference-pool": {
        "tandem-orchestrator": {"inferencePool": {"enabled": True}},
    },
    "no-dashboards": {chart: {"dashboards": {"enabled": False}} for chart in CHART_NAMES},
    "tls": {
        "tandem-prefill": {"tls": {"enabled": True, "secretName": TLS_SECRET}},
        "tandem-decode": {"tls": {"enabled": True, "secretName": TLS_SECRET}},
        "tandem-orchestrator": {"upstreamTls": {"enabled": True, "secretName": TLS_SECRET}},
    },
    "tracing": {
        "tandem-orchestrator": {"extraEnv": [OTLP_ENV]},
        "tandem-prefill": {"tracing": {"otlpTracesEndpoint": OTLP_GRPC}},
        "tandem-decode": {
            "sidecar": {"env": [OTLP_ENV]},
            "tracing": {"otlpTracesEndpoint": OTLP_GRPC},
        },
    },
    "autoscaling-keda": {
        **{
            chart: {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 12}}
            for chart in ("tandem-prefill", "tandem-decode")
        },
        "tandem-orchestrator": {
            "scaling": {
                "profile": "qwen3-32b-h100-tp2",
                "poolProfiles": {"decode": "llama-3.1-70b-h100-tp4"},
                "ttftSeconds": 1.5,
                "maxReplicas": 12,
            }
        },
    },
    "autoscaling-hpa": {
        chart: {
            "autoscaling": {
                "enabled": True,
                "kind": "hpa",
                "orchestratorSelector": 'service="llama-8b-orchestrator"',
            }
        }
        for chart in ("tandem-prefill", "tandem-decode")
    },
    "inference-pool-elsewhere": {
        "tandem-orchestrator": {
            "inferencePool": {"enabled": True, "endpointPicker": {"service": "tandem-epp"}},
            "grpc": {"port": 9100},
        },
    },
}
"""Releases the tests render: what each scenario sets on top of the required values."""


def release_values(chart: str, scenario: str) -> dict[str, Any]:
    """The values given to `helm install` for this chart in this scenario."""
    return {**REQUIRED[chart], **SCENARIOS[scenario].get(chart, {})}


@dataclass(frozen=True)
class Rendered:
    """One chart rendered with one scenario's values."""

    chart: str
    scenario: str
    values: dict[str, Any]
    """The values Helm used: the chart's defaults merged with the release's."""
    files: dict[str, str]

    @property
    def manifests(self) -> list[dict[str, Any]]:
        documents: list[dict[str, Any]] = []
        for path, text in sorted(self.files.items()):
            if path.endswith("NOTES.txt"):
                continue
            documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return documents

    @property
    def notes(self) -> str:
        return next(text for path, text in self.files.items() if path.endswith("NOTES.txt"))

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.manifests if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.kinds(kind)
        assert len(found) == 1, f"{self.chart}/{self.scenario}: {len(found)} {kind}"
        return found[0]

    def configuration(self) -> dict[str, Any]:
        """The orchestrator's configuration ConfigMap (not the dashboard's)."""
        found = [
            c for c in self.kinds("ConfigMap") if not c["metadata"]["name"].endswith("-dashboard")
        ]
        assert len(found) == 1, f"{self.chart}/{self.scenario}: {len(found)} configurations"
        return found[0]

    def dashboard(self) -> dict[str, Any] | None:
        """The Grafana dashboard's ConfigMap, if the release has one."""
        found = [c for c in self.kinds("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
        assert len(found) <= 1
        return found[0] if found else None

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def container(self, name: str, *, init: bool = False) -> dict[str, Any]:
        containers = self.pod_spec.get("initContainers" if init else "containers", [])
        return next(c for c in containers if c["name"] == name)


@pytest.fixture(scope="module")
def charts() -> Iterator[dict[str, helm_python.Chart]]:
    loaded = {name: helm_python.Chart.load(CHARTS_DIR / name) for name in CHART_NAMES}
    yield loaded
    for chart in loaded.values():
        chart.close()


@pytest.fixture(scope="module")
def rendered(charts: dict[str, helm_python.Chart]) -> dict[tuple[str, str], Rendered]:
    """Every chart rendered with every scenario's values, keyed by (chart, scenario)."""
    out: dict[tuple[str, str], Rendered] = {}
    for scenario in SCENARIOS:
        for name, chart in charts.items():
            values = release_values(name, scenario)
            files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
            out[name, scenario] = Rendered(
                name, scenario, chart.merge_values(values), {k: v for k, v in files.items() if v}
            )
    return out
