"""The sidecar's own metrics (`tandem_sidecar_*`), appended to vLLM's on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tandem_sidecar_requests",
            "Inference requests by how they were served: disaggregated, local (no prefill "
            "target given) or fallback (remote prefill failed, prefilled locally).",
            ["mode"], registry=r,
        )  # fmt: skip
        self.prefill_duration = Histogram(
            "tandem_sidecar_prefill_duration_seconds",
            "Time of a successful remote prefill request.", buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.kv_handoff = Histogram(
            "tandem_sidecar_kv_handoff_seconds",
            "From the prefill's answer to the decode's first byte (KV transfer and queueing).",
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "tandem_sidecar_fallbacks", "Remote prefills abandoned for local prefill, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.prefill_retries = Counter(
            "tandem_sidecar_prefill_retries",
            "Prefill attempts moved to the next candidate, by reason.", ["reason"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "tandem_sidecar_errors", "Requests answered with an error by the sidecar, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.client_fields_dropped = Counter(
            "tandem_sidecar_client_fields_dropped",
            "Body fields only tandem may set (kv_transfer_params) removed from requests.",
            ["field"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "tandem_sidecar_requests_in_flight",
            "Requests the sidecar holds before vLLM has them: prefilling elsewhere, or being "
            "handed over (a draining pod stops only once this and vLLM's own counts are 0).",
            registry=r,
        )
        self.vllm_up = Gauge(
            "tandem_sidecar_vllm_up",
            "1 while the pod's local vLLM answers, 0 once a request or a /metrics read found it "
            "unreachable.", registry=r,
        )  # fmt: skip
        self.orphaned_prefills = Counter(
            "tandem_sidecar_orphaned_prefills",
            "Prefills whose KV no decode read because the client left first; the prefill pod "
            "frees it when its lease expires.", registry=r,
        )  # fmt: skip
