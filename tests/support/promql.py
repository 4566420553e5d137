"""Just enough PromQL to evaluate the charts' autoscaling queries over samples: instant vector
selectors (=, !=, =~, !~), `sum` and `max` (optionally `by`), `+` and `ceil`. The query is
parsed by promql-parser (the Rust `promql-parser` crate, which Prometheus-compatible
projects use), so a query Prometheus would refuse fails here too."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import promql_parser

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]
"""Samples of one instant: each series' labels (sorted, `__name__` included) and value."""

_AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {"sum": math.fsum, "max": max}
_MATCHES: dict[str, Callable[[str, str], bool]] = {
    "Equal": lambda have, want: have == want,
    "NotEqual": lambda have, want: have != want,
    "Re": lambda have, want: re.fullmatch(want, have) is not None,
    "NotRe": lambda have, want: re.fullmatch(want, have) is None,
}


def evaluate(query: str, samples: Sequence[tuple[dict[str, str], float]]) -> Vector:
    """The instant vector `query` gives over `samples` (labels with `__name__`, value)."""
    series = {tuple(sorted(labels.items())): value for labels, value in samples}
    return _eval(promql_parser.parse(query), series)


def _eval(node: object, series: Vector) -> Vector:
    if isinstance(node, promql_parser.ParenExpr):
        return _eval(node.expr, series)
    if isinstance(node, promql_parser.VectorSelector):
        return {
            labels: value
            for labels, value in series.items()
            if dict(labels).get("__name__") == node.name
            and all(_matches(dict(labels), m) for m in node.matchers.matchers)
        }
    if isinstance(node, promql_parser.AggregateExpr):
        if node.modifier is not None and not str(node.modifier.type).endswith("By"):
            raise NotImplementedError(f"not in this subset of PromQL: {node.modifier}")
        keep = set(node.modifier.labels) if node.modifier is not None else set()
        groups: dict[Labels, list[float]] = {}
        for labels, value in _eval(node.expr, series).items():
            key = tuple((k, v) for k, v in labels if k in keep)
            groups.setdefault(key, []).append(value)
        return {key: _AGGREGATIONS[str(node.op)](values) for key, values in groups.items()}
    if isinstance(node, promql_parser.BinaryExpr) and str(node.op) == "+":
        left, right = _eval(node.lhs, series), _eval(node.rhs, series)
        return {labels: value + right[labels] for labels, value in left.items() if labels in right}
    if isinstance(node, promql_parser.Call) and node.func.name == "ceil":
        return {labels: math.ceil(value) for labels, value in _eval(node.args[0], series).items()}
    raise NotImplementedError(f"not in this subset of PromQL: {node}")


def _matches(labels: dict[str, str], matcher: promql_parser.Matcher) -> bool:
    return _MATCHES[str(matcher.op).rsplit(".", 1)[-1]](labels.get(matcher.name, ""), matcher.value)
