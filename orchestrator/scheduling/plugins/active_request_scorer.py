"""`active-request-scorer`: prefer endpoints with fewer requests in flight from here.

The counts are the orchestrator's own, updated when a request is sent and when it ends, so
they see a burst that no scrape has caught yet (llm-d/llm-d-router#298). score = 1 when at or
below `idleThreshold`, else (max - n) / max x `maxBusyScore`, max being the busiest candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import EndpointView


class ActiveRequestParameters(PluginParameters):
    idleThreshold: int = Field(0, ge=0)
    maxBusyScore: float = Field(1.0, ge=0.0, le=1.0)


class ActiveRequestScorer(Plugin):
    type_name = "active-request-scorer"
    Parameters = ActiveRequestParameters
    parameters: ActiveRequestParameters

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        idle = self.parameters.idleThreshold
        busiest = max((view.in_flight for view in endpoints), default=0)
        scores: dict[str, float] = {}
        for view in endpoints:
            if view.in_flight <= idle:
                scores[view.name] = 1.0
            else:
                share = (busiest - view.in_flight) / busiest
                scores[view.name] = share * self.parameters.maxBusyScore
        return scores
