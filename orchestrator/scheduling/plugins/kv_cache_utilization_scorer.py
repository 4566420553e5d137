"""`kv-cache-utilization-scorer`: prefer endpoints with free KV cache (1 - kv usage)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin
from tandem.orchestrator.scheduling.types import EndpointView


class KVCacheUtilizationScorer(Plugin):
    type_name = "kv-cache-utilization-scorer"

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        # Stale or missing metrics earn no advantage: score as a full cache.
        return {
            view.name: 1.0 - metrics.kv_usage if (metrics := view.fresh_metrics) else 0.0
            for view in endpoints
        }
