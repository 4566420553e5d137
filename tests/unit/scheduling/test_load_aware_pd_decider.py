"""`load-aware-pd-decider`: remote prefill unless the prefill pool is the bottleneck and the
decode pod has room, or a local prefill would stall a busy decode pod past its budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tandem.orchestrator as orchestrator
from tandem.orchestrator.scheduling.config import build_scheduler, load_config_file
from tandem.orchestrator.scheduling.plugins.load_aware_pd_decider import LoadAwarePDDecider
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.types import PDDecision, ProfileResult, ScoredEndpoint
from tests.unit.scheduling.support import (
    BLOCK_CHARS,
    make_cycle,
    make_request,
    make_view,
)

PROMPT_10_BLOCKS = "".join(f"<{n}>".ljust(BLOCK_CHARS, "-") for n in range(10))
"""640 estimated tokens in 10 index blocks of 64 tokens."""

RATE = {"prefillTokensPerSecond": 1000}
"""One token a millisecond: queue waits below read as token counts."""

LOCAL, REMOTE = PDDecision.LOCAL, PDDecision.DISAGGREGATE
CONFIG_DIR = Path(orchestrator.__file__).parent / "configs"


def _case(
    decision: PDDecision,
    reason: str,
    *,
    id: str,
    parameters: dict[str, Any] | None = None,
    prefill_tokens: int = 0,
    decode_tokens: int = 0,
    decoding: int = 1,
    cached_on_decode: int = 0,
    cached_on_prefill: int = 0,
    scraped_running: int = 0,
) -> Any:
    return pytest.param(
        RATE | (parameters or {}), prefill_tokens, decode_tokens, decoding, scraped_running,
        cached_on_decode, cached_on_prefill, decision, reason, id=id,
    )  # fmt: skip


CASES = [
    _case(REMOTE, "uncached_above_threshold", id="idle-pool-goes-remote"),
    _case(LOCAL, "decode_pod_idle", decoding=0, id="idle-decode-pod-prefills-in-place"),
    _case(REMOTE, "uncached_above_threshold", decoding=0,
          parameters={"idleDecodePrefill": False}, id="idle-rule-off"),
    _case(LOCAL, "uncached_below_threshold", decoding=0, cached_on_decode=7,
          id="floor-before-idle"),
    _case(REMOTE, "uncached_above_threshold", decoding=0, scraped_running=2,
          id="busy-with-another-replica-s-requests"),
    _case(REMOTE, "uncached_above_threshold", decoding=0, scraped_running=2,
          id="busy-with-another-replica-s-requests"),
    _case(LOCAL, "uncached_below_threshold", cached_on_decode=7, prefill_tokens=5000,
          id="floor-first"),
    _case(LOCAL, "prompt_below_min_tokens", parameters={"promptTokens": 641}, id="short-prompt"),
    _case(LOCAL, "prefill_pool_busy", prefill_tokens=2000, id="busy-pool-prefills-locally"),
    _case(REMOTE, "uncached_above_threshold", prefill_tokens=500, id="wait-at-limit-stays-remote"),
    _case(LOCAL, "prefill_pool_busy", prefill_tokens=501, id="wait-past-limit"),
    _case(REMOTE, "uncached_above_threshold", prefill_tokens=2000, decode_tokens=501,
          id="decode-pod-already-prefilling"),
    _case(LOCAL, "prefill_pool_busy", prefill_tokens=2000, decode_tokens=500,
          id="decode-pod-queue-within-limit"),
    _case(REMOTE, "uncached_above_threshold", prefill_tokens=600, decode_tokens=500,
          cached_on_prefill=9, id="sooner-on-the-prefill-pod-that-holds-the-prefix"),
    _case(REMOTE, "local_prefill_over_itl_budget", parameters={"itlBudgetMs": 100},
          prefill_tokens=5000, decoding=3, id="budget-protects-a-decoding-pod"),
    _case(LOCAL, "decode_pod_idle", parameters={"itlBudgetMs": 100}, prefill_tokens=5000,
          decoding=0, id="budget-ignored-by-an-idle-pod"),
    # A decode pod twice as fast: the 640-token chunk stalls it 320 ms; with 1,000 tokens
    # queued (0.5 s there) it finishes in 0.82 s against the prefill pod's 2.64 s.
    _case(REMOTE, "local_prefill_over_itl_budget",
          parameters={"itlBudgetMs": 300, "decodePrefillTokensPerSecond": 2000},
          prefill_tokens=2000, id="faster-decode-pod-still-over-budget"),
    _case(LOCAL, "prefill_pool_busy",
          parameters={"itlBudgetMs": 320, "decodePrefillTokensPerSecond": 2000},
          prefill_tokens=2000, decode_tokens=1000, id="faster-decode-pod-queue-within-wait"),
    _case(LOCAL, "prefill_pool_busy", parameters={"itlBudgetMs": 640}, prefill_tokens=5000,
          decoding=3, id="stall-within-budget"),
    _case(LOCAL, "prefill_pool_busy", parameters={"itlBudgetMs": 100, "maxNumBatchedTokens": 64},
          prefill_tokens=5000, decoding=3, id="chunked-stall-within-budget"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parameters", "prefill_tokens", "decode_tokens", "decoding", "scraped_running",
     "cached_on_decode", "cached_on_prefill", "decision", "reason"),
    CASES,
)  # fmt: skip
def test_load_aware_pd_decider(
    parameters: dict[str, Any],
    prefill_tokens: int,
    decode_tokens: int,
    decoding: int,
    scraped_running: int,
    cached_on_decode: int,
    cached_on_prefill: int,
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
            "d0", running=scraped_running, in_flight=decoding, in_flight_tokens=decode_tokens
        ),
        1.0,
    )
    prefill = ProfileResult(
        "prefill",
        (ScoredEndpoint(make_view("p0", "prefill", in_flight_tokens=prefill_tokens), 1.0),),
    )
    decider = LoadAwarePDDecider.from_parameters("pd-decider", parameters)

    assert decider.decide(make_cycle(request, index=index), decode, prefill) == (decision, reason)


def test_without_a_prefill_ranking_only_the_floor_applies() -> None:
    decider = LoadAwarePDDecider.from_parameters("pd-decider", RATE)
    decode = ScoredEndpoint(make_view("d0"), 1.0)

    def decide(tokens: int) -> tuple[PDDecision, str]:
        return decider.decide(make_cycle(make_request("x", num_prompt_tokens=tokens)), decode, None)

    assert decide(255) == (LOCAL, "uncached_below_threshold")
    assert decide(256) == (REMOTE, "uncached_above_threshold")


@pytest.mark.parametrize(
    "parameters",
    [{"nonCachedTokens": 0}, {"prefillTokensPerSecond": 0}, {"itlBudgetMs": 0},
     {"maxPrefillWaitMs": -1}, {"threshold": 256}],
)  # fmt: skip
def test_bad_parameters_are_refused(parameters: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(parameters))):
        LoadAwarePDDecider.from_parameters("pd-decider", parameters)


@pytest.mark.parametrize(
    ("prefill_tokens", "decision", "reason", "uncached"),
    [
        (0, REMOTE, "uncached_above_threshold", 2400),
        (18_001, LOCAL, "prefill_pool_busy", 2400),  # over 0.5 s at 36k tokens/s
    ],
)
def test_the_shipped_default_disaggregates_by_load(
    prefill_tokens: int, decision: PDDecision, reason: str, uncached: int
) -> None:
    scheduler = build_scheduler(load_config_file(CONFIG_DIR / "tandem.yaml"))
    pool = [
        make_view("p0", "prefill", in_flight_tokens=prefill_tokens),
        make_view("d0", "decode", in_flight=1),
    ]

    result = scheduler.schedule(make_request("long prompt " * 800), pool, now=0.0)

    assert (result.decision, result.reason) == (decision, reason)
    assert result.uncached_tokens == uncached
