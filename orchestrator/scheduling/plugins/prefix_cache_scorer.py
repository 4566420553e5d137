"""`prefix-cache-scorer`: prefer endpoints predicted to hold more of the prompt's prefix.

score = (1 - w) x matched / total + w x min(1, matched_tokens / S)^2, with w =
`matchLengthWeight` (0) and S = `matchLengthScaleTokens` (8192) (llm-d/llm-d-router:
scorer/prefix). The prediction comes from the cycle's approximate prefix index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field

from orchestrator.scheduling.framework import Cycle
from orchestrator.scheduling.registry import Plugin, PluginParameters
from orchestrator.scheduling.types import EndpointView


class PrefixCacheParameters(PluginParameters):
    matchLengthWeight: float = Field(0.0, ge=0.0, le=1.0)
    matchLengthScaleTokens: int = Field(8192, ge=1)


class PrefixCacheScorer(Plugin):
    type_name = "prefix-cache-scorer"
    Parameters = PrefixCacheParameters
    parameters: PrefixCacheParameters

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        total = len(cycle.block_hashes)
        if total == 0:
            return {view.name: 0.0 for view in endpoints}
        weight = self.parameters.matchLengthWeight
        scale = self.parameters.matchLengthScaleTokens
        scores: dict[str, float] = {}
        for view in endpoints:
            matched = cycle.matched_blocks(view.name)
            length_term = min(1.0, cycle.matched_tokens(view.name) / scale) ** 2
            scores[view.name] = (1 - weight) * matched / total + weight * length_term
        return scores
