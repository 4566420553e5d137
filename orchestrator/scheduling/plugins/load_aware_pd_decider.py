"""`load-aware-pd-decider`: disaggregate when it is worth it now, not only when it could be.

A remote prefill frees the decode pod from the prompt's compute, but waits behind whatever
the prefill pod is already computing. Prefilling on the decode pod waits behind that pod's
own local prefills, and stalls the requests it is decoding for the steps the prompt takes
(vLLM runs decodes first and fills the step's token budget with the prompt's chunk). So,
with U the prompt tokens the chosen decode pod does not hold:

  1. U < `nonCachedTokens` (the floor of `prefix-based-pd-decider`): local.
  2. The decode pod decodes nothing (none in flight from here, none running or waiting at
     its last fresh scrape) and `idleDecodePrefill`: local (`decode_pod_idle`): no running
     request's tokens wait for the prompt, and the request is spared the KV transfer and
     the hop to the prefill pod.
  3. `itlBudgetMs` set, the decode pod busy, and one chunk of the prompt (min(U,
     `maxNumBatchedTokens`) / the decode pod's rate) longer than the budget: remote
     (`local_prefill_over_itl_budget`): the running requests' inter-token gaps come first.
  4. The prefill pick's queue wait (its in-flight uncached tokens / rate) above
     `maxPrefillWaitMs`, the decode pod's own queue of local prefills within it (headroom:
     a decode pod that already prefills takes no more, or its decode batch would stall
     step after step), and the prompt done sooner there ((local queue + U) / its rate,
     against (queue + the prefill pick's uncached tokens) / the prefill rate): local
     (`prefill_pool_busy`).
  5. Otherwise remote (`uncached_above_threshold`).

The queues are the orchestrator's own in-flight counts (current at every request, not a
scrape). Without a prefill ranking (`stageOrder: decode-first` decides before the prefill
pool is ranked) only the floor applies. The default rate is a Llama-3.1-8B H100 pod's
prefill of an 8k-token prompt (tandem's H100 calibration reference, section 3: ~36k tok/s);
set it to the pool's own.
"""

from __future__ import annotations

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.plugins.pd_deciders import (
    PrefixBasedParameters,
    PrefixBasedPDDecider,
)
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    PDDecision,
    ProfileResult,
    ScoredEndpoint,
)


class LoadAwareParameters(PrefixBasedParameters):
    prefillTokensPerSecond: float = Field(
        36_000.0, gt=0, description="prompt tokens a prefill pod prefills per second"
    )
    decodePrefillTokensPerSecond: float | None = Field(
        None, gt=0, description="the same for a decode pod, where it differs (decode pods "
        "with more tensor parallelism prefill faster); unset: prefillTokensPerSecond",
    )  # fmt: skip
    maxPrefillWaitMs: float = Field(
        500.0, ge=0, description="prefill queue wait past which a local prefill is considered, "
        "and the most local prefill work a decode pod may queue",
    )  # fmt: skip
    itlBudgetMs: float | None = Field(
        None, gt=0, description="longest stall a local prefill may add to a busy decode pod's "
        "inter-token gaps (unset: no bound)",
    )  # fmt: skip
    maxNumBatchedTokens: int = Field(
        8192, ge=1, description="the decode pods' per-step token budget (vLLM's default)"
    )
    idleDecodePrefill: bool = Field(
        True, description="prefill on a decode pod that decodes nothing: no one's tokens "
        "wait for it, and the request is spared the KV transfer",
    )  # fmt: skip


class LoadAwarePDDecider(PrefixBasedPDDecider):
    """The prefix-based floor first, then the load."""

    type_name = "load-aware-pd-decider"
    Parameters = LoadAwareParameters
    parameters: LoadAwareParameters

    def decide(
        self, cycle: Cycle, decode: ScoredEndpoint, prefill: ProfileResult | None
    ) -> tuple[PDDecision, str]:
        floor = super().decide(cycle, decode, prefill)
        if floor[0] is PDDecision.LOCAL or prefill is None:
            return floor
        p = self.parameters
        uncached = cycle.request.num_prompt_tokens - cycle.matched_tokens(decode.name)
        local_rate = p.decodePrefillTokensPerSecond or p.prefillTokensPerSecond
        decoding = decodes(decode.view)
        if not decoding and p.idleDecodePrefill:
            return PDDecision.LOCAL, "decode_pod_idle"
        stall_ms = 1000 * min(uncached, p.maxNumBatchedTokens) / local_rate
        if p.itlBudgetMs is not None and decoding and stall_ms > p.itlBudgetMs:
            return PDDecision.DISAGGREGATE, "local_prefill_over_itl_budget"
        if prefill_pool_busy(cycle, decode, prefill.best, p):
            return PDDecision.LOCAL, "prefill_pool_busy"
        return PDDecision.DISAGGREGATE, "uncached_above_threshold"


def prefill_pool_busy(
    cycle: Cycle, decode: ScoredEndpoint, target: ScoredEndpoint, p: LoadAwareParameters
) -> bool:
    """Whether the prompt is better prefilled on the decode pod: the prefill pick's queue
    wait past `maxPrefillWaitMs`, the decode pod's own queue of local prefills within it, and
    the prompt done sooner there. The queues are the orchestrator's in-flight uncached
    tokens over each pool's rate."""
    rate = p.prefillTokensPerSecond
    local_rate = p.decodePrefillTokensPerSecond or rate
    prompt_tokens = cycle.request.num_prompt_tokens
    queued_s = target.view.in_flight_tokens / rate
    remote_s = queued_s + (prompt_tokens - cycle.matched_tokens(target.name)) / rate
    local_queued_s = decode.view.in_flight_tokens / local_rate
    local_s = local_queued_s + (prompt_tokens - cycle.matched_tokens(decode.name)) / local_rate
    return (
        1000 * queued_s > p.maxPrefillWaitMs
        and 1000 * local_queued_s <= p.maxPrefillWaitMs
        and local_s < remote_s
    )


def decodes(view: EndpointView) -> bool:
    """Whether a decode pod has requests to decode: from here (always current), or, as its last
    fresh scrape says, from another orchestrator replica."""
    metrics = view.fresh_metrics
    scraped = metrics is not None and (metrics.running or metrics.waiting)
    return view.in_flight > 0 or bool(scraped)
