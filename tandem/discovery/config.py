"""What Kubernetes discovery is configured with; plain data, so that a config file can be
read without importing the Kubernetes client (`tandem.discovery.kubernetes` does the watching)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class KubernetesDiscoveryConfig(BaseModel):
    """Which pods are endpoints: a label selector in a namespace, served on one port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    selector: str = Field(min_length=1)
    """A label selector, e.g. `llm-d.ai/inference-serving=true,llm-d.ai/model=llama-8b`."""
    namespace: str | None = None
    """Default: the namespace this process runs in, else the kubeconfig context's."""
    port: int = Field(8000, ge=1, le=65535)
    """The port every selected pod serves on (decode pods: their sidecar's)."""
    kubeconfig: str | None = None
    """A kubeconfig file; default: the in-cluster service account, else ~/.kube/config."""
    watch_timeout_s: int = Field(300, ge=1)
    """Server-side length of one watch request; the watch then resumes where it was."""
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
