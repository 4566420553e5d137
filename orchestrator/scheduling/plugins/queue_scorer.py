"""`queue-scorer`: prefer shorter waiting queues, min-max normalised over the candidates.

score = (max_q - q) / (max_q - min_q), all equal → 1 (llm-d/llm-d-router: scorer/queue).
An endpoint with stale or missing metrics counts as having the longest queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin
from tandem.orchestrator.scheduling.types import EndpointView


def min_max_scores(values: Mapping[str, float | None]) -> dict[str, float]:
    """Lower is better; None (unknown) scores 0; all known values equal → 1."""
    known = [v for v in values.values() if v is not None]
    if not known:
        return dict.fromkeys(values, 0.0)
    low, high = min(known), max(known)
    return {
        name: 0.0 if value is None else 1.0 if high == low else (high - value) / (high - low)
        for name, value in values.items()
    }


class QueueScorer(Plugin):
    type_name = "queue-scorer"

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        return min_max_scores(
            {
                view.name: float(metrics.waiting) if (metrics := view.fresh_metrics) else None
                for view in endpoints
            }
        )
