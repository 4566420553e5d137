"""`load-aware-scorer`: an absolute queue score, 0.5 when idle falling to 0 at `threshold`.

score = 0.5 when the waiting queue is empty, else 0.5 x (1 - min(q, threshold) / threshold)
(llm-d/llm-d-router: scorer/loadaware). Stale or missing metrics score 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import EndpointView


class LoadAwareParameters(PluginParameters):
    threshold: int = Field(128, ge=1)


class LoadAwareScorer(Plugin):
    type_name = "load-aware-scorer"
    Parameters = LoadAwareParameters
    parameters: LoadAwareParameters

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        threshold = self.parameters.threshold
        scores: dict[str, float] = {}
        for view in endpoints:
            metrics = view.fresh_metrics
            if metrics is None:
                scores[view.name] = 0.0
            elif metrics.waiting == 0:
                scores[view.name] = 0.5
            else:
                scores[view.name] = 0.5 * (1 - min(metrics.waiting, threshold) / threshold)
        return scores
