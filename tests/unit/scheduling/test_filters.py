"""Role filters and the label-selector filter: which endpoints a profile may consider."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tandem.discovery.endpoints import ROLE_LABEL
from tandem.orchestrator.scheduling.plugins import builtin_registry
from tandem.orchestrator.scheduling.plugins.label_selector_filter import LabelSelectorFilter
from tandem.orchestrator.scheduling.plugins.role_filters import DecodeFilter, PrefillFilter
from tests.unit.scheduling.support import make_cycle, make_view, names

# role label value → (kept by prefill-filter, kept by decode-filter), per llm-d's roles.go.
ROLE_CASES: dict[str | None, tuple[bool, bool]] = {
    "prefill": (True, False),
    "decode": (False, True),
    "both": (True, True),
    "prefill-decode": (True, True),
    "encode-prefill": (True, False),
    "encode-prefill-decode": (True, True),
    "encode": (False, False),
    "Decode": (False, False),
    "": (False, False),
    None: (False, True),
}


@pytest.mark.parametrize(
    ("role", "kept_by_prefill", "kept_by_decode"),
    [(role, p, d) for role, (p, d) in ROLE_CASES.items()],
    ids=[repr(role) for role in ROLE_CASES],
)
def test_role_filters_keep_llm_d_roles(
    role: str | None, kept_by_prefill: bool, kept_by_decode: bool
) -> None:
    endpoints = [make_view("pod", role)]
    cycle = make_cycle()

    prefill = PrefillFilter.from_parameters("prefill-filter", {}).filter(cycle, endpoints)
    decode = DecodeFilter.from_parameters("decode-filter", {}).filter(cycle, endpoints)

    assert (names(prefill) == ["pod"]) is kept_by_prefill
    assert (names(decode) == ["pod"]) is kept_by_decode


def test_role_filters_keep_order_of_a_mixed_pool() -> None:
    pool = [
        make_view("d1", "decode"),
        make_view("p1", "prefill"),
        make_view("u1", None),
        make_view("b1", "both"),
        make_view("p2", "prefill"),
    ]
    cycle = make_cycle()

    assert names(PrefillFilter.from_parameters("p", {}).filter(cycle, pool)) == ["p1", "b1", "p2"]
    assert names(DecodeFilter.from_parameters("d", {}).filter(cycle, pool)) == ["d1", "u1", "b1"]


LABELS: dict[str, dict[str, str]] = {
    "a100-decode": {"gpu": "a100", ROLE_LABEL: "decode", "zone": "z1"},
    "h100-decode": {"gpu": "h100", ROLE_LABEL: "decode"},
    "h100-prefill": {"gpu": "h100", ROLE_LABEL: "prefill", "zone": "z2"},
    "bare": {},
}


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        pytest.param({}, list(LABELS), id="empty-selects-all"),
        pytest.param({"matchLabels": {"gpu": "h100"}}, ["h100-decode", "h100-prefill"], id="label"),
        pytest.param(
            {"matchLabels": {"gpu": "h100", ROLE_LABEL: "decode"}}, ["h100-decode"], id="labels-and"
        ),
        pytest.param({"matchLabels": {"gpu": "tpu"}}, [], id="label-no-match"),
        pytest.param(
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100", "tpu"]}]},
            ["a100-decode"],
            id="In",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["a100"]}]},
            ["h100-decode", "h100-prefill", "bare"],
            id="NotIn-includes-absent-key",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "Exists"}]},
            ["a100-decode", "h100-prefill"],
            id="Exists",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]},
            ["h100-decode", "bare"],
            id="DoesNotExist",
        ),
        pytest.param(
            {
                "matchLabels": {"gpu": "h100"},
                "matchExpressions": [{"key": "zone", "operator": "Exists"}],
            },
            ["h100-prefill"],
            id="labels-and-expressions",
        ),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "gpu", "operator": "Exists"},
                    {"key": ROLE_LABEL, "operator": "NotIn", "values": ["prefill"]},
                ]
            },
            ["a100-decode", "h100-decode"],
            id="expressions-and",
        ),
    ],
)
def test_label_selector_filter(parameters: dict[str, Any], expected: list[str]) -> None:
    pool = [make_view(name, None, labels=labels) for name, labels in LABELS.items()]
    selector = LabelSelectorFilter.from_parameters("label-selector-filter", parameters)

    assert names(selector.filter(make_cycle(), pool)) == expected


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param({"key": "gpu", "operator": "In"}, id="In-without-values"),
        pytest.param({"key": "gpu", "operator": "In", "values": []}, id="In-empty-values"),
        pytest.param({"key": "gpu", "operator": "NotIn"}, id="NotIn-without-values"),
        pytest.param({"key": "gpu", "operator": "Exists", "values": ["a"]}, id="Exists-values"),
        pytest.param(
            {"key": "gpu", "operator": "DoesNotExist", "values": ["a"]}, id="DoesNotExist-values"
        ),
        pytest.param({"key": "gpu", "operator": "Equals", "values": ["a"]}, id="unknown-operator"),
        pytest.param({"key": "gpu", "operator": "in", "values": ["a"]}, id="operator-case"),
        pytest.param({"operator": "Exists"}, id="missing-key"),
    ],
)
def test_label_selector_rejects_invalid_expressions(expression: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LabelSelectorFilter.from_parameters("sel", {"matchExpressions": [expression]})


def test_by_label_selector_alias_is_registered() -> None:
    registry = builtin_registry()

    assert registry.get("by-label-selector") is LabelSelectorFilter
    assert registry.get("label-selector-filter") is LabelSelectorFilter
    assert "by-label-selector" in registry.type_names
