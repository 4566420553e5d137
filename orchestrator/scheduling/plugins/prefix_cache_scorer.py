"""`prefix-cache-scorer`: prefer endpoints predicted to hold more of the prompt's prefix.

score = (1 - w) x matched / total + w x min(1, matched_tokens / S)^2, with w =
`matchLengthWeight` (0) and S = `matchLengthScaleTokens` (8192) (llm-d/llm-d-router:
scorer/prefix), in the blocks of the index that knows the endpoint best: the precise one
(`precise-prefix-cache-producer`) where its KV events are whole, else the approximate one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import EndpointView


class PrefixCacheParameters(PluginParameters):
    matchLengthWeight: float = Field(0.0, ge=0.0, le=1.0)
    matchLengthScaleTokens: int = Field(8192, ge=1)


class PrefixCacheScorer(Plugin):
    type_name = "prefix-cache-scorer"
    Parameters = PrefixCacheParameters
    parameters: PrefixCacheParameters

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        weight = self.parameters.matchLengthWeight
        scale = self.parameters.matchLengthScaleTokens
        scores: dict[str, float] = {}
        for view in endpoints:
            match = cycle.match(view.name)
            if match.total == 0:
                scores[view.name] = 0.0
                continue
            length_term = min(1.0, cycle.matched_tokens(view.name) / scale) ** 2
            scores[view.name] = (1 - weight) * match.blocks / match.total + weight * length_term
        return scores
