"""`elastic-pd-decider`: each request split, whole on its decode pick, or whole on its
prefill pick, by the predicted wait and the step a local prefill makes a busy decode pod run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tandem.orchestrator as orchestrator
from tandem.orchestrator.scheduling.config import build_scheduler, load_config_file
from tandem.orchestrator.scheduling.plugins.elastic_pd_decider import ElasticPDDecider
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.types import PDDecision, ProfileResult, ScoredEndpoint
from tests.unit.scheduling.support import BLOCK_CHARS, make_cycle, make_request, make_view

PROMPT_10_BLOCKS = "".join(f"<{n}>".ljust(BLOCK_CHARS, "-") for n in range(10))
"""640 estimated tokens in 10 index blocks of 64 tokens."""

BASE = {"prefillTokensPerSecond": 1000, "decodeStepMs": 20, "itlBudgetMs": 700}
"""One token a millisecond: queue waits and step lengths below read as token counts. A busy
decode pod's step is 20 ms, plus its prompt tokens."""

LOCAL, REMOTE, WHOLE = PDDecision.LOCAL, PDDecision.DISAGGREGATE, PDDecision.WHOLE_ON_PREFILL
CONFIG_DIR = Path(orchestrator.__file__).parent / "configs"


def _case(
    decision: PDDecision,
    reason: str,
    *,
    id: str,
    parameters: dict[str, Any] | None = None,
    prefill_queue: int = 0,
    local_queue: int = 0,
    decoding: int = 1,
    decode_kv_usage: float = 0.5,
    cached_on_decode: int = 0,
    decode_itl_ms: float | None = None,
    cached_on_prefill: int = 0,
) -> Any:
    return pytest.param(
        BASE | (parameters or {}), prefill_queue, local_queue, decoding, decode_kv_usage,
        cached_on_decode, cached_on_prefill, decode_itl_ms, decision, reason, id=id,
    )  # fmt: skip


CASES = [
    _case(REMOTE, "uncached_above_threshold", id="an-idle-prefill-pool-takes-the-prompt"),
    _case(LOCAL, "uncached_below_threshold", cached_on_decode=7, decode_kv_usage=0.99,
          id="a-cached-prompt-stays-even-on-a-full-decode-pod"),
    _case(LOCAL, "decode_pod_idle", decoding=0, id="an-idle-decode-pod-prefills-in-place"),
    # The decode pool is out of room: a prefill pod with nothing queued serves it whole.
    _case(WHOLE, "decode_pool_short", decode_kv_usage=0.9, id="full-decode-pod"),
    _case(WHOLE, "decode_pool_short", decode_kv_usage=0.95, decoding=0,
          id="full-before-idle"),
    _case(WHOLE, "decode_pool_short", decode_kv_usage=0.95, prefill_queue=500,
          id="on-a-prefill-pod-whose-queue-is-within-the-wait"),
    _case(REMOTE, "uncached_above_threshold", decode_kv_usage=0.95, prefill_queue=501,
          local_queue=501, id="not-on-a-prefill-pod-whose-queue-is-past-it"),
    _case(REMOTE, "uncached_above_threshold", decode_kv_usage=0.95,
          parameters={"wholeOnPrefill": False}, id="whole-on-prefill-off"),
    _case(REMOTE, "uncached_above_threshold", decode_kv_usage=0.8,
          parameters={"decodeKvUsageLimit": 0.85}, id="below-the-limit"),
    # The prefill pool queues past 0.5 s: a local prefill if its step stays in the budget.
    _case(LOCAL, "prefill_pool_busy", prefill_queue=501, id="the-step-within-the-budget"),
    _case(REMOTE, "uncached_above_threshold", prefill_queue=500, id="the-wait-at-its-limit"),
    # 20 ms + 640 tokens = 660 ms against budgets of 659 and 660.
    _case(REMOTE, "local_prefill_over_itl_budget", prefill_queue=2000,
          parameters={"itlBudgetMs": 659}, id="the-step-over-the-budget"),
    _case(LOCAL, "prefill_pool_busy", prefill_queue=2000, parameters={"itlBudgetMs": 660},
          id="the-step-at-the-budget"),
    # The step holds what the pod already prefills locally: 20 + 40 + 640 = 700 ms.
    _case(LOCAL, "prefill_pool_busy", prefill_queue=2000, local_queue=40,
          id="with-queued-local-tokens-within"),
    _case(REMOTE, "local_prefill_over_itl_budget", prefill_queue=2000, local_queue=41,
          id="with-queued-local-tokens-over"),
    # A smaller step budget on the decode pods bounds the step: 20 + 256 ms.
    _case(LOCAL, "prefill_pool_busy", prefill_queue=2000, local_queue=400,
          parameters={"itlBudgetMs": 276, "maxNumBatchedTokens": 256},
          id="a-small-step-budget-chunks-the-prompt"),
    _case(REMOTE, "local_prefill_over_itl_budget", prefill_queue=2000,
          parameters={"itlBudgetMs": 100, "decodeStepMs": 90, "maxNumBatchedTokens": 11},
          id="a-slow-decode-step-leaves-no-room"),
    _case(LOCAL, "prefill_pool_busy", prefill_queue=2000,
          parameters={"itlBudgetMs": None}, id="no-budget"),
    # 0.5 + 0.8 s on a decode pod that prefills at 800 tokens/s, 0.6 + 0.64 s remote.
    _case(REMOTE, "uncached_above_threshold", prefill_queue=600, local_queue=400,
          parameters={"decodePrefillTokensPerSecond": 800}, id="sooner-on-the-prefill-pod"),
    _case(REMOTE, "uncached_above_threshold", prefill_queue=2000, local_queue=501,
          id="the-decode-pod-already-prefills-enough"),
    # The decode pod's recent mean gap, learned from its ITL histogram, against the budget.
    _case(REMOTE, "local_prefill_over_mean_itl_budget", prefill_queue=2000, decode_itl_ms=35,
          parameters={"meanItlBudgetMs": 35}, id="a-decode-pod-at-its-mean-gap-budget"),
    _case(LOCAL, "prefill_pool_busy", prefill_queue=2000, decode_itl_ms=34.9,
          parameters={"meanItlBudgetMs": 35}, id="a-decode-pod-under-its-mean-gap-budget"),
    _case(LOCAL, "prefill_pool_busy", prefill_queue=2000,
          parameters={"meanItlBudgetMs": 35}, id="a-decode-pod-whose-gap-is-not-known-yet"),
    _case(LOCAL, "prefill_pool_busy", prefill_queue=2000, decode_itl_ms=80,
          id="no-mean-gap-budget"),
    # The decode pod holds more of the prompt than the prefill pick (a conversation's last
    # answer, which only the pod that decoded it holds): computing the rest there is less
    # work, within the budgets.
    _case(LOCAL, "decode_pod_holds_more", cached_on_decode=6, cached_on_prefill=5,
          id="the-decode-pod-holds-more"),
    _case(REMOTE, "uncached_above_threshold", cached_on_decode=5, cached_on_prefill=5,
          id="both-hold-as-much"),
    _case(REMOTE, "uncached_above_threshold", cached_on_decode=6, cached_on_prefill=5,
          parameters={"itlBudgetMs": 275}, id="holding-more-but-over-the-step-budget"),
    _case(REMOTE, "uncached_above_threshold", cached_on_decode=6, cached_on_prefill=5,
          decode_itl_ms=40, parameters={"meanItlBudgetMs": 35},
          id="holding-more-but-over-the-mean-gap-budget"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parameters", "prefill_queue", "local_queue", "decoding", "decode_kv_usage",
     "cached_on_decode", "cached_on_prefill", "decode_itl_ms", "decision", "reason"),
    CASES,
)  # fmt: skip
def test_elastic_pd_decider(
    parameters: dict[str, Any],
    prefill_queue: int,
    local_queue: int,
    decoding: int,
    decode_kv_usage: float,
    cached_on_decode: int,
    cached_on_prefill: int,
    decode_itl_ms: float | None,
    decision: PDDecision,
    reason: str,
) -> None:
    index = PrefixIndex()
    request = make_request(PROMPT_10_BLOCKS)
    hashes = index.hashes(request.prompt)
    index.record("d0", hashes[:cached_on_decode])
    index.record("p0", hashes[:cached_on_prefill])
    decode = ScoredEndpoint(
        make_view(
            "d0",
            in_flight=decoding,
            in_flight_tokens=local_queue,
            kv_usage=decode_kv_usage,
            itl_s=None if decode_itl_ms is None else decode_itl_ms / 1000,
        ),
        1.0,
    )
    prefill = ProfileResult(
        "prefill",
        (ScoredEndpoint(make_view("p0", "prefill", in_flight_tokens=prefill_queue), 1.0),),
    )
    decider = ElasticPDDecider.from_parameters("pd-decider", parameters)

    assert decider.decide(make_cycle(request, index=index), decode, prefill) == (decision, reason)


@pytest.mark.parametrize(
    "parameters",
    [{"decodeStepMs": -1}, {"decodeKvUsageLimit": 0}, {"decodeKvUsageLimit": 1.5},
     {"itlBudgetMs": 0}],
)  # fmt: skip
def test_bad_parameters_are_refused(parameters: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(parameters))):
        ElasticPDDecider.from_parameters("pd-decider", parameters)


def test_a_prefill_pod_chosen_to_serve_whole_is_the_primary_target() -> None:
    """The shipped default: the prefill pod serves the request (no remote prefill), and it is
    counted as the pod that prefills it."""
    scheduler = build_scheduler(load_config_file(CONFIG_DIR / "tandem.yaml"))
    pool = [make_view("p0", "prefill"), make_view("d0", "decode", in_flight=3, kv_usage=0.97)]

    result = scheduler.schedule(make_request("long prompt " * 800), pool, now=0.0)

    assert result.decode.best.name == "p0"
    assert (result.decision, result.reason) == (LOCAL, "decode_pool_short")
    assert result.prefill_targets == ()
    assert result.uncached_tokens == 2400


@pytest.mark.parametrize(
    ("local_queue", "decision", "reason"),
    [
        (0, LOCAL, "prefill_pool_busy"),  # 20 ms + 2,048 tokens at 36k/s: 77 ms
        (18_000, LOCAL, "prefill_pool_busy"),  # the step is bounded by the pods' budget
        (18_001, REMOTE, "uncached_above_threshold"),  # its own queue past 0.5 s
    ],
)
def test_the_shipped_default_bounds_a_local_prefill_by_the_decode_pods_step_budget(
    local_queue: int, decision: PDDecision, reason: str
) -> None:
    scheduler = build_scheduler(load_config_file(CONFIG_DIR / "tandem.yaml"))
    pool = [
        make_view("p0", "prefill", in_flight_tokens=40_000),
        make_view("d0", "decode", in_flight=1, in_flight_tokens=local_queue),
    ]

    result = scheduler.schedule(make_request("long prompt " * 800), pool, now=0.0)

    assert (result.decision, result.reason) == (decision, reason)
