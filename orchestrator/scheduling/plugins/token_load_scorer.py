"""`token-load-scorer`: an absolute load score in prompt tokens still to be prefilled.

score = 1 - min(1, tokens / `queueThresholdTokens`) (llm-d/llm-d-router: scorer/tokenload,
default threshold 4,194,304). The tokens are the orchestrator's own count of the uncached
prompt tokens it has sent to the endpoint whose first byte has not come back, so a burst
counts at once and a prompt that hits the cache loads its pod only by what it computes.
Unlike the min-max queue scores, the score does not stretch a small difference between
candidates over the whole range: a prefix-cache match keeps its endpoint until the load
there is a real share of the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import EndpointView


class TokenLoadParameters(PluginParameters):
    queueThresholdTokens: int = Field(
        4_194_304, ge=1, description="in-flight prefill tokens at which the score reaches 0"
    )


class TokenLoadScorer(Plugin):
    type_name = "token-load-scorer"
    Parameters = TokenLoadParameters
    parameters: TokenLoadParameters

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        threshold = self.parameters.queueThresholdTokens
        return {view.name: 1.0 - min(1.0, view.in_flight_tokens / threshold) for view in endpoints}
