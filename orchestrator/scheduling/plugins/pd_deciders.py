"""P/D deciders: whether a request's prefill runs on a prefill pod or on its decode pod.

`prefix-based-pd-decider` disaggregates when the prompt tokens the chosen decode pod does not
already hold reach `nonCachedTokens` (llm-d's parameter names). Below that, moving the KV
costs more than prefilling in place. There is no magic zero: a threshold must be at least 1,
and "always" and "never" are spelled out (`always-disagg-pd-decider`, or no decider).
"""

from __future__ import annotations

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import PDDecision, ProfileResult, ScoredEndpoint


class PrefixBasedParameters(PluginParameters):
    nonCachedTokens: int = Field(
        256,
        ge=1,
        description="disaggregate when at least this many prompt tokens are not cached on the "
        "decode pod; for 'always' use always-disagg-pd-decider, for 'never' configure no decider",
    )
    promptTokens: int = Field(0, ge=0, description="only prompts at least this long (0: any)")


class PrefixBasedPDDecider(Plugin):
    type_name = "prefix-based-pd-decider"
    Parameters = PrefixBasedParameters
    parameters: PrefixBasedParameters

    def decide(
        self, cycle: Cycle, decode: ScoredEndpoint, prefill: ProfileResult | None
    ) -> tuple[PDDecision, str]:
        prompt_tokens = cycle.request.num_prompt_tokens
        if prompt_tokens < self.parameters.promptTokens:
            return PDDecision.LOCAL, "prompt_below_min_tokens"
        uncached = prompt_tokens - cycle.matched_tokens(decode.name)
        if uncached < self.parameters.nonCachedTokens:
            return PDDecision.LOCAL, "uncached_below_threshold"
        return PDDecision.DISAGGREGATE, "uncached_above_threshold"


class AlwaysDisaggPDDecider(Plugin):
    type_name = "always-disagg-pd-decider"

    def decide(
        self, cycle: Cycle, decode: ScoredEndpoint, prefill: ProfileResult | None
    ) -> tuple[PDDecision, str]:
        return PDDecision.DISAGGREGATE, "always"
