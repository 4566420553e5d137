"""P/D deciders and profile handlers: whether and where a request is prefilled remotely."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from tandem.errors import SchedulingError
from tandem.orchestrator.scheduling.framework import Cycle, Decider
from tandem.orchestrator.scheduling.plugins.max_score_picker import MaxScorePicker
from tandem.orchestrator.scheduling.plugins.pd_deciders import (
    AlwaysDisaggPDDecider,
    PrefixBasedPDDecider,
)
from tandem.orchestrator.scheduling.plugins.profile_handlers import (
    DisaggProfileHandler,
    SingleProfileHandler,
)
from tandem.orchestrator.scheduling.plugins.role_filters import DecodeFilter, PrefillFilter
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.profile import Profile
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    PDDecision,
    ProfileResult,
    ScoredEndpoint,
)
from tests.unit.scheduling.support import BLOCK_CHARS, make_cycle, make_request, make_view

PROMPT_10_BLOCKS = "".join(f"<{n}>".ljust(BLOCK_CHARS, "-") for n in range(10))
"""640 estimated tokens in 10 index blocks of 64 tokens."""


@pytest.mark.parametrize(
    ("parameters", "cached_blocks", "cached_on", "decision", "reason"),
    [
        pytest.param({}, 0, "d0", PDDecision.DISAGGREGATE, "uncached_above_threshold", id="cold"),
        pytest.param({}, 6, "d0", PDDecision.DISAGGREGATE, "uncached_above_threshold", id="at"),
        pytest.param({}, 7, "d0", PDDecision.LOCAL, "uncached_below_threshold", id="below"),
        pytest.param({}, 10, "d0", PDDecision.LOCAL, "uncached_below_threshold", id="all-cached"),
        pytest.param(
            {}, 10, "d1", PDDecision.DISAGGREGATE, "uncached_above_threshold", id="cached-elsewhere"
        ),
        pytest.param(
            {"nonCachedTokens": 641}, 0, "d0", PDDecision.LOCAL, "uncached_below_threshold", id="hi"
        ),
        pytest.param(
            {"nonCachedTokens": 1}, 9, "d0", PDDecision.DISAGGREGATE, "uncached_above_threshold",
            id="one-block-uncached",
        ),
        pytest.param(
            {"promptTokens": 641}, 0, "d0", PDDecision.LOCAL, "prompt_below_min_tokens", id="short"
        ),
        pytest.param(
            {"promptTokens": 640}, 0, "d0", PDDecision.DISAGGREGATE, "uncached_above_threshold",
            id="prompt-at-min",
        ),
        pytest.param(
            {"promptTokens": 100}, 8, "d0", PDDecision.LOCAL, "uncached_below_threshold",
            id="long-but-cached",
        ),
    ],
)  # fmt: skip
def test_prefix_based_pd_decider(
    parameters: dict[str, Any],
    cached_blocks: int,
    cached_on: str,
    decision: PDDecision,
    reason: str,
) -> None:
    index = PrefixIndex()
    request = make_request(PROMPT_10_BLOCKS)
    assert request.num_prompt_tokens == 640
    index.record(cached_on, index.hashes(request.prompt)[:cached_blocks])
    decider = PrefixBasedPDDecider.from_parameters("pd-decider", parameters)
    decode = ScoredEndpoint(make_view("d0"), 1.0)

    assert decider.decide(make_cycle(request, index=index), decode, None) == (decision, reason)


def test_prefix_based_pd_decider_default_threshold_is_256() -> None:
    decider = PrefixBasedPDDecider.from_parameters("pd-decider", {})
    decode = ScoredEndpoint(make_view("d0"), 1.0)

    def decide(tokens: int) -> PDDecision:
        cycle = make_cycle(make_request("x", num_prompt_tokens=tokens))
        return decider.decide(cycle, decode, None)[0]

    assert (decide(255), decide(256)) == (PDDecision.LOCAL, PDDecision.DISAGGREGATE)


@pytest.mark.parametrize("tokens", [0, 1, 100_000])
def test_always_disagg_pd_decider(tokens: int) -> None:
    decider = AlwaysDisaggPDDecider.from_parameters("always", {})
    cycle = make_cycle(make_request("x", num_prompt_tokens=tokens))

    decision = decider.decide(cycle, ScoredEndpoint(make_view("d0"), 0.0), None)

    assert decision == (PDDecision.DISAGGREGATE, "always")


@dataclass
class RecordingProfile:
    """A real profile that notes when it runs, to check the handler's stage order."""

    profile: Profile
    runs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.profile.name

    def run(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> ProfileResult | None:
        self.runs.append(self.profile.name)
        return self.profile.run(cycle, endpoints)


def pd_profiles(runs: list[str]) -> dict[str, RecordingProfile]:
    picker = MaxScorePicker.from_parameters("picker", {"maxNumOfEndpoints": 2})
    prefill = Profile("prefill", (PrefillFilter.from_parameters("pf", {}),), (), picker)
    decode = Profile("decode", (DecodeFilter.from_parameters("df", {}),), (), picker)
    return {"prefill": RecordingProfile(prefill, runs), "decode": RecordingProfile(decode, runs)}


def disagg_handler(
    order: Literal["prefill-first", "decode-first"], decider: Decider | None
) -> DisaggProfileHandler:
    refs = {"prefill": "pd-decider"} if decider is not None else {}
    handler = DisaggProfileHandler.from_parameters(
        "disagg-profile-handler", {"stageOrder": order, "deciders": refs}
    )
    handler.bind({"pd-decider": decider} if decider is not None else {})
    return handler


PD_POOL = [make_view("p0", "prefill"), make_view("p1", "prefill"), make_view("d0", "decode")]
ONLY_DECODE = [make_view("d0", "decode"), make_view("u0", None)]
ONLY_PREFILL = [make_view("p0", "prefill"), make_view("p1", "prefill")]
AGGREGATED = [make_view("a0", "both"), make_view("a1", "both")]
LONG, SHORT = 4000, 100


@dataclass(frozen=True)
class HandlerCase:
    pool: list[EndpointView]
    tokens: int
    decision: PDDecision
    reason: str
    prefill_targets: set[str]
    runs: dict[str, list[str]]
    """Order in which the profiles ran, per stage order."""
    with_decider: bool = True


HANDLER_CASES = {
    "long-uncached": HandlerCase(
        PD_POOL, LONG, PDDecision.DISAGGREGATE, "uncached_above_threshold", {"p0", "p1"},
        {"prefill-first": ["prefill", "decode"], "decode-first": ["decode", "prefill"]},
    ),
    "short": HandlerCase(
        PD_POOL, SHORT, PDDecision.LOCAL, "uncached_below_threshold", set(),
        {"prefill-first": ["prefill", "decode"], "decode-first": ["decode"]},
    ),
    "aggregated": HandlerCase(
        AGGREGATED, LONG, PDDecision.LOCAL, "aggregated_endpoint", set(),
        {"prefill-first": ["prefill", "decode"], "decode-first": ["decode"]},
    ),
    "no-prefill-pool": HandlerCase(
        ONLY_DECODE, LONG, PDDecision.LOCAL, "no_prefill_endpoint", set(),
        {"prefill-first": ["prefill", "decode"], "decode-first": ["decode", "prefill"]},
    ),
    "no-decider": HandlerCase(
        PD_POOL, LONG, PDDecision.LOCAL, "disaggregation_off", set(),
        {"prefill-first": ["prefill", "decode"], "decode-first": ["decode"]},
        with_decider=False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("order", ["prefill-first", "decode-first"])
@pytest.mark.parametrize("case", HANDLER_CASES.values(), ids=HANDLER_CASES.keys())
def test_disagg_profile_handler(
    case: HandlerCase, order: Literal["prefill-first", "decode-first"]
) -> None:
    runs: list[str] = []
    decider = PrefixBasedPDDecider.from_parameters("pd-decider", {"nonCachedTokens": 256})
    handler = disagg_handler(order, decider if case.with_decider else None)
    cycle = make_cycle(make_request("q", num_prompt_tokens=case.tokens))

    result = handler.run(cycle, pd_profiles(runs), case.pool)

    assert (result.decision, result.reason) == (case.decision, case.reason)
    assert {t.name for t in result.prefill_targets} == case.prefill_targets
    assert result.decode.profile == "decode"
    assert result.decode.best.view.endpoint.role in {"decode", "both", None}
    assert runs == case.runs[order]


@pytest.mark.parametrize("order", ["prefill-first", "decode-first"])
def test_disagg_profile_handler_without_decode_endpoints_fails_503(
    order: Literal["prefill-first", "decode-first"],
) -> None:
    handler = disagg_handler(order, AlwaysDisaggPDDecider.from_parameters("pd-decider", {}))

    with pytest.raises(SchedulingError) as caught:
        handler.run(make_cycle(), pd_profiles([]), ONLY_PREFILL)

    assert (caught.value.status, caught.value.reason) == (503, "no_decode_endpoint")


def test_disagg_profile_handler_uses_configured_profile_names() -> None:
    runs: list[str] = []
    profiles = pd_profiles(runs)
    renamed = {"pf-pool": profiles["prefill"], "dc-pool": profiles["decode"]}
    handler = DisaggProfileHandler.from_parameters(
        "h", {"profiles": {"prefill": "pf-pool", "decode": "dc-pool"}}
    )

    result = handler.run(make_cycle(), renamed, PD_POOL)

    assert handler.required_profiles() == ("dc-pool", "pf-pool")
    assert result.decode.best.name == "d0"


def test_disagg_profile_handler_bind_rejects_a_non_decider() -> None:
    handler = DisaggProfileHandler.from_parameters("h", {"deciders": {"prefill": "picker"}})

    with pytest.raises(ValueError, match=r"deciders\.prefill"):
        handler.bind({"picker": MaxScorePicker.from_parameters("picker", {})})


@pytest.mark.parametrize(
    ("parameters", "expected_profile", "expected_pick"),
    [
        pytest.param({}, "decode", "d0", id="first-profile"),
        pytest.param({"profile": "prefill"}, "prefill", "p0", id="named-profile"),
    ],
)
def test_single_profile_handler(
    parameters: dict[str, str], expected_profile: str, expected_pick: str
) -> None:
    runs: list[str] = []
    profiles = pd_profiles(runs)
    ordered = {"decode": profiles["decode"], "prefill": profiles["prefill"]}
    handler = SingleProfileHandler.from_parameters("single-profile-handler", parameters)
    pool = [make_view("p0", "prefill"), make_view("d0", "decode")]

    result = handler.run(make_cycle(), ordered, pool)

    assert (result.decision, result.reason) == (PDDecision.LOCAL, "single_profile")
    assert result.prefill is None
    assert result.prefill_targets == ()
    assert (result.decode.profile, result.decode.best.name) == (expected_profile, expected_pick)
    assert runs == [expected_profile]


def test_single_profile_handler_without_endpoints_fails_503() -> None:
    handler = SingleProfileHandler.from_parameters("single-profile-handler", {})

    with pytest.raises(SchedulingError) as caught:
        handler.run(make_cycle(), {"decode": pd_profiles([])["decode"]}, ONLY_PREFILL)

    assert (caught.value.status, caught.value.reason) == (503, "no_decode_endpoint")
