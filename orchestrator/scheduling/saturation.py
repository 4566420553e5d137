"""When an endpoint can take no more: the saturation detector behind admission control.

An endpoint is saturated when one more request would only wait, on the pod or behind it:

- the engine's own queue or KV cache is full, by its last fresh scrape
  (`queueDepthThreshold`: `vllm:num_requests_waiting` at or above it, counting only those
  waiting for room where the engine says why they wait; `kvCacheUtilThreshold`:
  `vllm:kv_cache_usage_perc` at or above it): the Gateway API Inference Extension's
  saturation detector and its defaults, 5 and 0.8 (kubernetes-sigs/
  gateway-api-inference-extension: site-src/guides/epp-configuration/config-text.md). Stale
  metrics say nothing here: the orchestrator's own counts below still apply;
- or this orchestrator already has as much in flight there as the pool is sized for
  (tandem's own limits, current at every request, where a scrape lags a burst): requests per
  decode endpoint (`maxRequestsPerEndpoint`: the decode batch the ITL target allows), and
  uncached prompt tokens not yet prefilled per prefill endpoint
  (`maxPrefillTokensPerEndpoint`: the prefill rate times the queue wait the TTFT target
  allows).

A pool is saturated when every endpoint of it is. Pure: it reads endpoint views.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tandem.discovery.endpoints import Role
from tandem.orchestrator.scheduling.types import EndpointView, EngineMetrics


class SaturationDetectorConfig(BaseModel):
    """The scheduler configuration's `saturationDetector` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queueDepthThreshold: int | None = Field(5, ge=1)
    kvCacheUtilThreshold: float | None = Field(0.8, gt=0, le=1)
    maxRequestsPerEndpoint: int | None = Field(None, ge=1)
    maxPrefillTokensPerEndpoint: int | None = Field(None, ge=1)


PREFILL_POOL_ROLES = frozenset({Role.PREFILL, Role.ENCODE_PREFILL})
"""Pods that only prefill: the prefill pool. Every other role can decode."""


def in_prefill_pool(view: EndpointView) -> bool:
    return view.endpoint.role in PREFILL_POOL_ROLES


class SaturationDetector:
    """Whether an endpoint is saturated; `max_in_flight` is the gateway's hard cap on any
    endpoint (`gateway.max_in_flight_per_endpoint`), which applies with or without a
    configured detector."""

    def __init__(self, config: SaturationDetectorConfig | None, max_in_flight: int) -> None:
        self.config = config
        self.max_in_flight = max_in_flight

    def saturated(self, view: EndpointView) -> bool:
        if view.in_flight >= self.max_in_flight:
            return True
        config = self.config
        if config is None:
            return False
        if (metrics := view.fresh_metrics) is not None and _engine_full(config, metrics):
            return True
        if in_prefill_pool(view):
            limit = config.maxPrefillTokensPerEndpoint
            return limit is not None and view.in_flight_tokens >= limit
        limit = config.maxRequestsPerEndpoint
        return limit is not None and view.in_flight >= limit


def _engine_full(config: SaturationDetectorConfig, metrics: EngineMetrics) -> bool:
    queue, kv = config.queueDepthThreshold, config.kvCacheUtilThreshold
    # A decode pod's requests whose KV is still on its way wait too, but not for room.
    waiting = (
        metrics.waiting if metrics.waiting_for_capacity is None else metrics.waiting_for_capacity
    )
    return (queue is not None and waiting >= queue) or (kv is not None and metrics.kv_usage >= kv)
