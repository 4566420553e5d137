"""The sidecar's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tandem.discovery.config import KubernetesDiscoveryConfig
from tandem.http.tls import ClientTLS, ServerTLS

PrefillFailurePolicy = Literal["local", "next-candidate", "fail"]
KVLoadFailurePolicy = Literal["recompute", "fail"]


class SidecarConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    vllm_host: str = "127.0.0.1"
    vllm_port: int = Field(8200, ge=1, le=65535)
    prefill_endpoints: tuple[str, ...] = ()
    """Allowed prefill targets as host:port (the static allowlist)."""
    prefill_discovery: KubernetesDiscoveryConfig | None = None
    """Or: the allowlist is the Ready prefill pods this selects (on Kubernetes)."""
    connect_timeout_s: float = Field(5.0, gt=0)
    prefill_timeout_s: float = Field(120.0, gt=0)
    """Longest wait for a prefill answer before trying the next candidate."""
    decode_timeout_s: float = Field(600.0, gt=0)
    """Longest wait for the first byte, and between bytes, of the local decode."""
    keepalive_expiry_s: float = Field(4.0, gt=0)
    """Pooled connections are dropped before vLLM's own idle timeout (uvicorn's 5 s) closes
    them, so a request never lands on a connection the server is closing."""
    rewrite_cached_tokens: bool = False
    """For vLLM releases that report the transferred tokens as cached on the decode side:
    replace usage.prompt_tokens_details.cached_tokens with the prefill side's count."""
    prefill_failure_policy: PrefillFailurePolicy = "local"
    """When a prefill pod fails (unreachable, 5xx, timeout, no KV handle in its answer):
    `local` tries the next candidate, then prefills on this pod — no request is lost to a
    prefill-pool outage, at the cost of this pod's inter-token gaps; `next-candidate` tries
    the next candidates, then answers 502/503/504; `fail` answers at the first failure."""
    tls: ServerTLS | None = None
    """Serve TLS (with `client_ca_file`, mTLS: the orchestrator must present a certificate)."""
    prefill_tls: ClientTLS = Field(default_factory=ClientTLS)
    """TLS (and mTLS) to the prefill pods."""
    kv_load_failure_policy: KVLoadFailurePolicy = "recompute"
    """When the decode fails before its first token because its KV load failed (vLLM's
    `fail` policy): `recompute` prefills locally once, `fail` relays vLLM's error."""

    @model_validator(mode="after")
    def _one_allowlist(self) -> SidecarConfig:
        if self.prefill_endpoints and self.prefill_discovery is not None:
            raise ValueError("give either prefill_endpoints or prefill_discovery, not both")
        return self
