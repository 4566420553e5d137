"""Scorers: each endpoint's score in [0, 1] from its metrics, in-flight count or cache."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.orchestrator.scheduling.plugins.active_request_scorer import ActiveRequestScorer
from tandem.orchestrator.scheduling.plugins.kv_cache_utilization_scorer import (
    KVCacheUtilizationScorer,
)
from tandem.orchestrator.scheduling.plugins.load_aware_scorer import LoadAwareScorer
from tandem.orchestrator.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from tandem.orchestrator.scheduling.plugins.queue_scorer import QueueScorer
from tandem.orchestrator.scheduling.plugins.session_affinity_scorer import (
    SESSION_ID_HEADER,
    SESSION_TOKEN_HEADER,
    SessionAffinityScorer,
    encode_session_token,
)
from tandem.orchestrator.scheduling.plugins.token_load_scorer import TokenLoadScorer
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    PDDecision,
    ProfileResult,
    SchedulingResult,
    ScoredEndpoint,
)
from tests.unit.scheduling.support import (
    BLOCK_CHARS,
    group_prompt,
    make_cycle,
    make_request,
    make_view,
    pd_config,
    scheduler_from,
)


@pytest.mark.parametrize(
    ("views", "expected"),
    [
        pytest.param(
            [
                make_view("a", kv_usage=0.0),
                make_view("b", kv_usage=0.25),
                make_view("c", kv_usage=1),
            ],
            {"a": 1.0, "b": 0.75, "c": 0.0},
            id="one-minus-usage",
        ),
        pytest.param(
            [make_view("a", kv_usage=0.1, fresh=False), make_view("b", has_metrics=False)],
            {"a": 0.0, "b": 0.0},
            id="stale-or-missing-scores-0",
        ),
    ],
)
def test_kv_cache_utilization_scorer(views: list[EndpointView], expected: dict[str, float]) -> None:
    scorer = KVCacheUtilizationScorer.from_parameters("kv-cache-utilization-scorer", {})

    assert scorer.score(make_cycle(), views) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("views", "expected"),
    [
        pytest.param(
            [make_view("a", waiting=0), make_view("b", waiting=5), make_view("c", waiting=10)],
            {"a": 1.0, "b": 0.5, "c": 0.0},
            id="min-max",
        ),
        pytest.param(
            [make_view("a", waiting=4), make_view("b", waiting=7), make_view("c", waiting=10)],
            {"a": 1.0, "b": 0.5, "c": 0.0},
            id="min-max-offset",
        ),
        pytest.param(
            [make_view("a", waiting=3), make_view("b", waiting=3)],
            {"a": 1.0, "b": 1.0},
            id="all-equal-1",
        ),
        pytest.param([make_view("a", waiting=9)], {"a": 1.0}, id="single-1"),
        pytest.param(
            [
                make_view("a", waiting=0, fresh=False),
                make_view("b", has_metrics=False),
                make_view("c", waiting=2),
                make_view("d", waiting=6),
            ],
            {"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.0},
            id="stale-and-missing-0",
        ),
        pytest.param(
            [make_view("a", fresh=False), make_view("b", has_metrics=False)],
            {"a": 0.0, "b": 0.0},
            id="nothing-known",
        ),
    ],
)
def test_queue_scorer(views: list[EndpointView], expected: dict[str, float]) -> None:
    scorer = QueueScorer.from_parameters("queue-scorer", {})

    assert scorer.score(make_cycle(), views) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("parameters", "in_flight", "expected"),
    [
        pytest.param({}, [0, 2, 4], [1.0, 0.5, 0.0], id="defaults"),
        pytest.param({}, [0, 0], [1.0, 1.0], id="all-idle"),
        pytest.param({}, [3, 3], [0.0, 0.0], id="all-equally-busy"),
        pytest.param({"idleThreshold": 2}, [0, 2, 4], [1.0, 1.0, 0.0], id="idle-threshold"),
        pytest.param({"idleThreshold": 1}, [1, 2, 8], [1.0, 0.75, 0.0], id="idle-threshold-1"),
        pytest.param({"maxBusyScore": 0.5}, [0, 2, 4], [1.0, 0.25, 0.0], id="max-busy-score"),
        pytest.param(
            {"idleThreshold": 1, "maxBusyScore": 0.8}, [0, 2, 4], [1.0, 0.4, 0.0], id="both"
        ),
    ],
)
def test_active_request_scorer(
    parameters: dict[str, Any], in_flight: list[int], expected: list[float]
) -> None:
    views = [make_view(f"e{i}", in_flight=n) for i, n in enumerate(in_flight)]
    scorer = ActiveRequestScorer.from_parameters("active-request-scorer", parameters)

    scores = scorer.score(make_cycle(), views)

    assert [scores[v.name] for v in views] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("parameters", "view", "expected"),
    [
        pytest.param({}, make_view("a", waiting=0), 0.5, id="idle-0.5"),
        pytest.param({}, make_view("a", waiting=32), 0.375, id="quarter"),
        pytest.param({}, make_view("a", waiting=64), 0.25, id="half"),
        pytest.param({}, make_view("a", waiting=128), 0.0, id="at-threshold"),
        pytest.param({}, make_view("a", waiting=1000), 0.0, id="beyond-threshold"),
        pytest.param({"threshold": 10}, make_view("a", waiting=5), 0.25, id="custom-threshold"),
        pytest.param({"threshold": 10}, make_view("a", waiting=1), 0.45, id="custom-one"),
        pytest.param({}, make_view("a", waiting=0, fresh=False), 0.0, id="stale"),
        pytest.param({}, make_view("a", has_metrics=False), 0.0, id="missing"),
    ],
)
def test_load_aware_scorer(parameters: dict[str, Any], view: EndpointView, expected: float) -> None:
    scorer = LoadAwareScorer.from_parameters("load-aware-scorer", parameters)

    assert scorer.score(make_cycle(), [view]) == pytest.approx({"a": expected})


@pytest.mark.parametrize(
    ("parameters", "tokens", "expected"),
    [
        pytest.param({}, 0, 1.0, id="idle-1"),
        pytest.param({}, 1_048_576, 0.75, id="llm-d-default-threshold"),
        pytest.param({"queueThresholdTokens": 1000}, 250, 0.75, id="quarter"),
        pytest.param({"queueThresholdTokens": 1000}, 1000, 0.0, id="at-threshold"),
        pytest.param({"queueThresholdTokens": 1000}, 5000, 0.0, id="beyond-threshold"),
    ],
)
def test_token_load_scorer(parameters: dict[str, Any], tokens: int, expected: float) -> None:
    scorer = TokenLoadScorer.from_parameters("token-load-scorer", parameters)
    # Absolute, not min-max: the score does not depend on the other candidates'.
    views = [make_view("a", in_flight_tokens=tokens), make_view("b", in_flight_tokens=999_999)]

    assert scorer.score(make_cycle(), views)["a"] == pytest.approx(expected)


def test_token_load_keeps_a_cached_prefix_on_a_moderately_busier_pod() -> None:
    """Prefix 3 + token load 4 (tandem.yaml's prefill profile): a pod holding most of the
    prompt keeps it against an idle cold pod until its queue is a real share of the
    threshold (3 x match < 4 x queue / threshold), where min-max request counts would have
    sent it away at the first request."""
    document = pd_config(
        plugins=[
            {"type": "prefill-filter"},
            {"type": "decode-filter"},
            {"type": "prefix-cache-scorer"},
            {"type": "token-load-scorer", "parameters": {"queueThresholdTokens": 65536}},
            {"type": "always-disagg-pd-decider"},
        ],
        prefill=[
            {"pluginRef": "prefill-filter"},
            {"pluginRef": "prefix-cache-scorer", "weight": 3},
            {"pluginRef": "token-load-scorer", "weight": 4},
        ],
        decode=[{"pluginRef": "decode-filter"}],
    )
    request = make_request(group_prompt("what was the revenue?"))
    earlier = group_prompt("and the margin?")

    def prefill_pick(warm_queue: int) -> str:
        scheduler = scheduler_from(document)
        scheduler.prefix_index.record("warm", scheduler.prefix_index.hashes(earlier))
        pool = [
            make_view("warm", "prefill", in_flight=1, in_flight_tokens=warm_queue),
            make_view("cold", "prefill"),
            make_view("d0", "decode"),
        ]
        return scheduler.schedule(request, pool, now=0.0).prefill_targets[0].name

    assert prefill_pick(0) == "warm"
    assert prefill_pick(8_000) == "warm"
    assert prefill_pick(65_536) == "cold"


PROMPT_8_BLOCKS = "".join(f"block {n:02d} ".ljust(BLOCK_CHARS, "x") for n in range(8))
"""Exactly 8 index blocks (2048 characters, 512 estimated tokens)."""


@pytest.mark.parametrize(
    ("parameters", "cached_blocks", "expected"),
    [
        pytest.param({}, 0, 0.0, id="cold"),
        pytest.param({}, 2, 0.25, id="quarter"),
        pytest.param({}, 8, 1.0, id="all"),
        # 4 of 8 blocks = 256 tokens: (1-w)*0.5 + w*min(1, 256/S)^2.
        pytest.param({"matchLengthWeight": 0.5, "matchLengthScaleTokens": 512}, 4, 0.375, id="w"),
        pytest.param(
            {"matchLengthWeight": 0.5, "matchLengthScaleTokens": 128}, 4, 0.75, id="w-cap"
        ),
        pytest.param({"matchLengthWeight": 1.0, "matchLengthScaleTokens": 1024}, 8, 0.25, id="w1"),
        pytest.param(
            {"matchLengthWeight": 0.5}, 8, 0.5 + 0.5 * (512 / 8192) ** 2, id="w-default-S"
        ),
    ],
)
def test_prefix_cache_scorer(
    parameters: dict[str, Any], cached_blocks: int, expected: float
) -> None:
    index = PrefixIndex()
    request = make_request(PROMPT_8_BLOCKS)
    hashes = index.hashes(request.prompt)
    assert len(hashes) == 8
    index.record("warm", hashes[:cached_blocks])
    index.record("other", index.hashes("unrelated " * 100))
    scorer = PrefixCacheScorer.from_parameters("prefix-cache-scorer", parameters)

    scores = scorer.score(make_cycle(request, index=index), [make_view("warm"), make_view("other")])

    assert scores == pytest.approx({"warm": expected, "other": 0.0})


def test_prefix_cache_scorer_without_hashes_scores_0() -> None:
    index = PrefixIndex()
    short = "a prompt shorter than one block"
    index.record("warm", index.hashes(short * 20))
    scorer = PrefixCacheScorer.from_parameters("prefix-cache-scorer", {"matchLengthWeight": 1.0})

    scores = scorer.score(make_cycle(make_request(short), index=index), [make_view("warm")])

    assert index.hashes(short) == []
    assert scores == {"warm": 0.0}


VIEWS = [make_view("a"), make_view("b"), make_view("c")]


def decode_result(endpoint: str) -> SchedulingResult:
    """A scheduling outcome whose decode pick is `endpoint`."""
    pick = ScoredEndpoint(make_view(endpoint), 1.0)
    return SchedulingResult(ProfileResult("decode", (pick,)), None, PDDecision.LOCAL, "test")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({SESSION_TOKEN_HEADER: encode_session_token("b")}, "b", id="bound"),
        pytest.param({SESSION_TOKEN_HEADER: encode_session_token("gone")}, None, id="departed"),
        pytest.param({}, None, id="no-header"),
        pytest.param({SESSION_TOKEN_HEADER: "abc"}, None, id="bad-padding"),
        pytest.param({SESSION_TOKEN_HEADER: "%%%"}, None, id="not-base64"),
        pytest.param({SESSION_TOKEN_HEADER: "_w=="}, None, id="not-utf8"),
        pytest.param({SESSION_ID_HEADER: "s1"}, None, id="session-id-ignored"),
    ],
)
def test_session_affinity_encoded_header(headers: dict[str, str], expected: str | None) -> None:
    scorer = SessionAffinityScorer.from_parameters("session-affinity-scorer", {})
    scorer.remember({SESSION_ID_HEADER: "s1"}, decode_result("c"))  # ignored by this strategy

    scores = scorer.score(make_cycle(make_request(headers=headers)), VIEWS)

    assert scores == {v.name: 1.0 if v.name == expected else 0.0 for v in VIEWS}


@pytest.mark.parametrize(
    ("remembered", "headers", "expected"),
    [
        pytest.param([("s1", "b")], {SESSION_ID_HEADER: "s1"}, "b", id="bound"),
        pytest.param([("s1", "b"), ("s1", "c")], {SESSION_ID_HEADER: "s1"}, "c", id="rebound"),
        pytest.param([("s1", "b")], {SESSION_ID_HEADER: "s2"}, None, id="other-session"),
        pytest.param([("s1", "b")], {}, None, id="no-header"),
        pytest.param(
            [("s1", "b")], {SESSION_TOKEN_HEADER: encode_session_token("a")}, None, id="token"
        ),
        # maxSessions 2: s1 is the least recently bound when s3 arrives.
        pytest.param(
            [("s1", "a"), ("s2", "b"), ("s3", "c")], {SESSION_ID_HEADER: "s1"}, None, id="lru"
        ),
        pytest.param(
            [("s1", "a"), ("s2", "b"), ("s1", "a"), ("s3", "c")],
            {SESSION_ID_HEADER: "s1"},
            "a",
            id="lru-touch",
        ),
    ],
)
def test_session_affinity_session_id(
    remembered: list[tuple[str, str]], headers: dict[str, str], expected: str | None
) -> None:
    scorer = SessionAffinityScorer.from_parameters(
        "session-affinity-scorer", {"strategy": "session_id", "maxSessions": 2}
    )
    for session_id, endpoint in remembered:
        scorer.remember({SESSION_ID_HEADER: session_id}, decode_result(endpoint))

    scores = scorer.score(make_cycle(make_request(headers=headers)), VIEWS)

    assert scores == {v.name: 1.0 if v.name == expected else 0.0 for v in VIEWS}


SESSION_PLUGINS = [
    {"type": "decode-filter"},
    {"type": "prefill-filter"},
    {"type": "always-disagg-pd-decider"},
]
POOL = [make_view(f"p{i}", "prefill") for i in range(4)] + [
    make_view(f"d{i}", "decode") for i in range(4)
]


@pytest.mark.parametrize("seed", range(8))
def test_session_id_affinity_is_remembered_by_the_scheduler(seed: int) -> None:
    scheduler = scheduler_from(
        pd_config(
            plugins=[
                *SESSION_PLUGINS,
                {"type": "session-affinity-scorer", "parameters": {"strategy": "session_id"}},
            ],
            prefill=[{"pluginRef": "prefill-filter"}],
            decode=[{"pluginRef": "decode-filter"}, {"pluginRef": "session-affinity-scorer"}],
        ),
        seed=seed,
    )
    headers = {SESSION_ID_HEADER: "chat-42"}

    first = scheduler.schedule(make_request("hi", headers=headers), POOL, now=0.0)
    later = [
        scheduler.schedule(make_request(f"turn {n}", headers=headers), POOL, now=float(n))
        for n in range(1, 6)
    ]
    others = {
        scheduler.schedule(
            make_request("hi", headers={SESSION_ID_HEADER: f"other-{n}"}), POOL, now=0.0
        ).decode.best.name
        for n in range(20)
    }

    assert {r.decode.best.name for r in later} == {first.decode.best.name}
    assert len(others) > 1  # unbound sessions still spread


def test_session_id_affinity_for_the_prefill_profile() -> None:
    scheduler = scheduler_from(
        pd_config(
            plugins=[
                *SESSION_PLUGINS,
                {
                    "type": "session-affinity-scorer",
                    "parameters": {"strategy": "session_id", "profileName": "prefill"},
                },
            ],
            prefill=[{"pluginRef": "prefill-filter"}, {"pluginRef": "session-affinity-scorer"}],
            decode=[{"pluginRef": "decode-filter"}],
        ),
    )
    headers = {SESSION_ID_HEADER: "chat-42"}
    long_prompt = group_prompt("first")

    first = scheduler.schedule(make_request(long_prompt, headers=headers), POOL, now=0.0)
    later = [
        scheduler.schedule(make_request(long_prompt, headers=headers), POOL, now=float(n))
        for n in range(1, 9)
    ]

    assert first.prefill_targets
    assert {r.prefill_targets[0].name for r in later} == {first.prefill_targets[0].name}
