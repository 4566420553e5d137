"""Pickers: how scored endpoints are ranked and how many are kept."""

from __future__ import annotations

from collections import Counter

import pytest

from tandem.orchestrator.scheduling.plugins.max_score_picker import MaxScorePicker
from tandem.orchestrator.scheduling.plugins.random_picker import RandomPicker
from tandem.orchestrator.scheduling.plugins.round_robin_picker import RoundRobinPicker
from tandem.orchestrator.scheduling.plugins.weighted_random_picker import WeightedRandomPicker
from tests.unit.scheduling.support import make_cycle, make_scored, names

SEEDS = range(60)
PICKERS = [MaxScorePicker, RandomPicker, WeightedRandomPicker, RoundRobinPicker]
AnyPicker = type[MaxScorePicker | RandomPicker | WeightedRandomPicker | RoundRobinPicker]


@pytest.mark.parametrize(
    ("scores", "keep", "expected"),
    [
        pytest.param({"a": 0.2, "b": 3.0, "c": 1.5}, 1, ["b"], id="highest"),
        pytest.param({"a": 0.2, "b": 3.0, "c": 1.5}, 2, ["b", "c"], id="two-best-first"),
        pytest.param({"a": 0.2, "b": 3.0, "c": 1.5}, 3, ["b", "c", "a"], id="all-ranked"),
        pytest.param({"a": 0.2, "b": 3.0}, 5, ["b", "a"], id="fewer-than-asked"),
        pytest.param({"a": 0.0}, 1, ["a"], id="zero-score-still-picked"),
    ],
)
def test_max_score_picker_ranks_by_score(
    scores: dict[str, float], keep: int, expected: list[str]
) -> None:
    picker = MaxScorePicker.from_parameters("max-score-picker", {"maxNumOfEndpoints": keep})

    for seed in range(5):
        assert names(picker.pick(make_cycle(seed=seed), make_scored(scores))) == expected


def test_max_score_picker_breaks_ties_randomly() -> None:
    picker = MaxScorePicker.from_parameters("max-score-picker", {})
    scored = make_scored({"low": 0.5, "t1": 2.0, "t2": 2.0, "t3": 2.0})

    firsts = Counter(names(picker.pick(make_cycle(seed=seed), scored))[0] for seed in SEEDS)

    assert set(firsts) == {"t1", "t2", "t3"}


def test_max_score_picker_keeps_tied_endpoints_above_lower_ones() -> None:
    picker = MaxScorePicker.from_parameters("max-score-picker", {"maxNumOfEndpoints": 2})
    scored = make_scored({"low": 0.5, "t1": 2.0, "t2": 2.0, "t3": 2.0})

    picks = [names(picker.pick(make_cycle(seed=seed), scored)) for seed in SEEDS]

    assert all(len(p) == 2 and "low" not in p for p in picks)
    assert {tuple(p) for p in picks} >= {("t1", "t2"), ("t2", "t1"), ("t3", "t1")}


@pytest.mark.parametrize(("keep", "expected_len"), [(1, 1), (2, 2), (9, 4)])
def test_random_picker_ignores_scores(keep: int, expected_len: int) -> None:
    picker = RandomPicker.from_parameters("random-picker", {"maxNumOfEndpoints": keep})
    scored = make_scored({"a": 10.0, "b": 0.0, "c": 0.0, "d": 0.0})

    picks = [names(picker.pick(make_cycle(seed=seed), scored)) for seed in SEEDS]

    assert all(len(p) == expected_len == len(set(p)) for p in picks)
    assert {p[0] for p in picks} == {"a", "b", "c", "d"}


def test_weighted_random_picker_all_zero_is_uniform() -> None:
    picker = WeightedRandomPicker.from_parameters("weighted-random-picker", {})
    scored = make_scored({"a": 0.0, "b": 0.0, "c": 0.0})

    firsts = Counter(names(picker.pick(make_cycle(seed=seed), scored))[0] for seed in SEEDS)

    assert set(firsts) == {"a", "b", "c"}


def test_weighted_random_picker_never_picks_zero_first() -> None:
    picker = WeightedRandomPicker.from_parameters(
        "weighted-random-picker", {"maxNumOfEndpoints": 3}
    )
    scored = make_scored({"zero": 0.0, "tiny": 0.01, "big": 3.0})

    picks = [names(picker.pick(make_cycle(seed=seed), scored)) for seed in range(300)]

    assert all(p[0] != "zero" for p in picks)
    assert all(p[-1] == "zero" and len(p) == 3 for p in picks)


def test_weighted_random_picker_prefers_higher_scores() -> None:
    picker = WeightedRandomPicker.from_parameters("weighted-random-picker", {})
    scored = make_scored({"low": 0.1, "high": 0.9})

    firsts = Counter(names(picker.pick(make_cycle(seed=seed), scored))[0] for seed in range(400))

    # P(high first) = 0.9 with keys U^(1/score).
    assert firsts["low"] > 0
    assert firsts["high"] > 3 * firsts["low"]


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        pytest.param(1, [["a"], ["b"], ["c"], ["a"], ["b"]], id="one"),
        pytest.param(2, [["a", "b"], ["b", "c"], ["c", "a"], ["a", "b"]], id="two"),
    ],
)
def test_round_robin_picker_cycles_in_name_order(keep: int, expected: list[list[str]]) -> None:
    picker = RoundRobinPicker.from_parameters("round-robin-picker", {"maxNumOfEndpoints": keep})
    scored = make_scored({"c": 9.0, "a": 0.0, "b": 5.0})  # scores and input order ignored

    picks = [names(picker.pick(make_cycle(seed=n), scored)) for n in range(len(expected))]

    assert picks == expected


def test_round_robin_pickers_keep_separate_turns() -> None:
    prefill = RoundRobinPicker.from_parameters("prefill-picker", {})
    decode = RoundRobinPicker.from_parameters("decode-picker", {})
    scored = make_scored({"a": 0.0, "b": 0.0})

    turns = [
        (names(prefill.pick(make_cycle(), scored)), names(decode.pick(make_cycle(), scored)))
        for _ in range(2)
    ]

    assert turns == [(["a"], ["a"]), (["b"], ["b"])]


@pytest.mark.parametrize("picker_type", PICKERS)
def test_pickers_return_nothing_for_no_candidates(picker_type: AnyPicker) -> None:
    picker = picker_type.from_parameters("picker", {})

    assert picker.pick(make_cycle(), []) == []


@pytest.mark.parametrize("picker_type", PICKERS)
def test_pickers_reject_zero_endpoints(picker_type: AnyPicker) -> None:
    with pytest.raises(ValueError, match="maxNumOfEndpoints"):
        picker_type.from_parameters("picker", {"maxNumOfEndpoints": 0})
