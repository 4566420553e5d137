"""`elastic-pd-decider`: serve each request split or whole, on whichever pod meets the SLOs.

Pods keep their KV role (vLLM deprecates `kv_role: kv_both` for the NixlConnector); what is
free per request is whether it is split at all, and which pod serves it whole. With D the
decode pick, P the prefill pick and U the prompt tokens a pod does not hold, the three
placements are:

- **split**: P prefills, D decodes. Its TTFT waits behind P's queue; no running request's
  tokens wait for it.
- **whole on D** (local): D prefills in place. No KV transfer, and D's own queue of local
  prefills instead of P's; but while it prefills, every request D decodes gets a longer step:
  one step computes D's running tokens and up to `maxNumBatchedTokens` of prompt (vLLM runs
  decodes first and fills the rest of the step's budget with prompt chunks).
- **whole on P**: P serves it, prefill and decode, as an aggregated pod would. For when the
  decode pool is short of KV room and a prefill pod's queue is short.

The rules, in order (each counted with its reason in `tandem_pd_decisions_total`):

1. U on D below `nonCachedTokens`: local (`uncached_below_threshold`): moving the KV costs
   more than computing it.
2. `wholeOnPrefill`, D short of KV room (its last fresh scrape: KV use at or above
   `decodeKvUsageLimit`; a queue alone is not, vLLM's `capacity` waiting reason counts a
   request that waits a step for the token budget too) and P's queue wait within
   `maxPrefillWaitMs`: whole on P (`decode_pool_short`).
3. D decodes nothing and `idleDecodePrefill`: local (`decode_pod_idle`): nobody's tokens wait.
4. D holds more of the prompt than P (a conversation's last answer lives only on the pod that
   decoded it) and a local prefill stays within the budgets below: local
   (`decode_pod_holds_more`): less to compute, and no KV to move.
5. P's queue wait above `maxPrefillWaitMs`, D's own queue of local prefills within it, and the
   prompt done sooner on D: local (`prefill_pool_busy`), unless the step it would make D run
   (`decodeStepMs` plus the prompt tokens of the step: D's queued local ones and this one's,
   up to `maxNumBatchedTokens`, at D's rate) passes `itlBudgetMs`: then split
   (`local_prefill_over_itl_budget`): the running requests' inter-token gaps come first. So
   too where D's recent mean gap, learned from its own ITL histogram, has reached
   `meanItlBudgetMs` (`local_prefill_over_mean_itl_budget`): the local prefills it already
   takes stretch every step they share, and a pod that does nothing else must not take more.
6. Otherwise split (`uncached_above_threshold`).

Run the decode pods with a small step budget (vLLM's `--max-num-batched-tokens`; the decode
pool's default is 2048) and tell the decider the same `maxNumBatchedTokens`: then a local
prefill lengthens each of its steps by ~57 ms on a Llama-3.1-8B H100 pod, under a 100 ms P99
gap, instead of ~200 ms for a 7,200-token prompt in one step. vLLM's own tuning advice: a
smaller `max_num_batched_tokens` gives better inter-token latency, fewer prefill tokens
slowing the decodes (vllm-project/vllm: docs/configuration/optimization.md, "Performance
tuning with chunked prefill").
"""

from __future__ import annotations

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.plugins.load_aware_pd_decider import (
    LoadAwareParameters,
    decodes,
    prefill_pool_busy,
)
from tandem.orchestrator.scheduling.plugins.pd_deciders import PrefixBasedPDDecider
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    PDDecision,
    ProfileResult,
    ScoredEndpoint,
)


class ElasticParameters(LoadAwareParameters):
    itlBudgetMs: float | None = Field(
        100.0, gt=0, description="longest inter-token gap a local prefill may make a busy "
        "decode pod's step (the P99 gap you promise; unset: no bound)",
    )  # fmt: skip
    # The default: a Llama-3.1-8B TP1 H100 pod decoding ~32 requests of ~6.5k tokens steps
    # in ~17 ms (tandem's H100 calibration reference, the step model of section 2).
    decodeStepMs: float = Field(
        20.0, ge=0, description="a busy decode pod's step without prompt tokens, which a "
        "local prefill's tokens add to",
    )  # fmt: skip
    meanItlBudgetMs: float | None = Field(
        None, gt=0, description="no local prefill on a decode pod whose recent mean "
        "inter-token gap (learned from its ITL histogram) has reached this: the mean ITL you "
        "promise, less a margin (unset: no bound)",
    )  # fmt: skip
    wholeOnPrefill: bool = Field(
        True, description="let a prefill pod whose queue wait is within maxPrefillWaitMs "
        "serve a request whole when the decode pick is short of KV room",
    )  # fmt: skip
    decodeKvUsageLimit: float = Field(
        0.9, gt=0, le=1, description="KV use at which a decode pod counts as short of room"
    )


class ElasticPDDecider(PrefixBasedPDDecider):
    """Split, whole on the decode pick, or whole on the prefill pick."""

    type_name = "elastic-pd-decider"
    Parameters = ElasticParameters
    parameters: ElasticParameters

    def decide(
        self, cycle: Cycle, decode: ScoredEndpoint, prefill: ProfileResult | None
    ) -> tuple[PDDecision, str]:
        floor = super().decide(cycle, decode, prefill)
        if floor[0] is PDDecision.LOCAL or prefill is None:
            return floor
        p = self.parameters
        target = prefill.best
        prefill_wait_ms = 1000 * target.view.in_flight_tokens / p.prefillTokensPerSecond
        room_on_prefill = prefill_wait_ms <= p.maxPrefillWaitMs
        if p.wholeOnPrefill and _short_of_room(decode.view, p) and room_on_prefill:
            return PDDecision.WHOLE_ON_PREFILL, "decode_pool_short"
        if not decodes(decode.view) and p.idleDecodePrefill:
            return PDDecision.LOCAL, "decode_pod_idle"
        uncached = cycle.request.num_prompt_tokens - cycle.matched_tokens(decode.name)
        remote_uncached = cycle.request.num_prompt_tokens - cycle.matched_tokens(target.name)
        over_budget = _over_budget(decode.view, uncached, p)
        if uncached < remote_uncached and over_budget is None:
            return PDDecision.LOCAL, "decode_pod_holds_more"
        if prefill_pool_busy(cycle, decode, target, p):
            if over_budget is not None:
                return PDDecision.DISAGGREGATE, over_budget
            return PDDecision.LOCAL, "prefill_pool_busy"
        return PDDecision.DISAGGREGATE, "uncached_above_threshold"


def _over_budget(view: EndpointView, uncached: int, p: ElasticParameters) -> str | None:
    """Why prefilling `uncached` tokens on a busy decode pod would stretch its requests' gaps
    past a budget, or None when it would not: the step it would run (`decodeStepMs` plus the
    step's prompt tokens, its queued local ones and these, at most `maxNumBatchedTokens`,
    at its rate) against `itlBudgetMs`, and its learned mean gap against `meanItlBudgetMs`."""
    local_rate = p.decodePrefillTokensPerSecond or p.prefillTokensPerSecond
    step_tokens = min(view.in_flight_tokens + uncached, p.maxNumBatchedTokens)
    step_ms = p.decodeStepMs + 1000 * step_tokens / local_rate
    if p.itlBudgetMs is not None and step_ms > p.itlBudgetMs:
        return "local_prefill_over_itl_budget"
    itl_ms = None if view.itl_s is None else 1000 * view.itl_s
    if p.meanItlBudgetMs is not None and itl_ms is not None and itl_ms >= p.meanItlBudgetMs:
        return "local_prefill_over_mean_itl_budget"
    return None


def _short_of_room(view: EndpointView, p: ElasticParameters) -> bool:
    """Whether a decode pod's last fresh scrape says its KV cache is (nearly) full."""
    metrics = view.fresh_metrics
    if metrics is None:
        return False
    return metrics.kv_usage >= p.decodeKvUsageLimit
