"""The Grafana dashboards the charts provision: one per release, found by Grafana's sidecar,
each query on this release's pods."""

from __future__ import annotations

import json

import pytest

from tests.deploy.conftest import CHART_NAMES, NAMESPACE, RELEASE, Rendered
from tests.support.dashboards import DASHBOARDS, load, metric_names, queries


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_each_release_provisions_its_dashboard_for_grafanas_sidecar(
    rendered: dict[tuple[str, str], Rendered], chart: str
) -> None:
    r = rendered[chart, "defaults"]
    configmap = r.dashboard()

    assert configmap is not None
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    dashboard = json.loads(text)
    assert "__TANDEM_" not in text
    variables = {v["name"]: v["query"] for v in dashboard["templating"]["list"]}
    assert variables["namespace"] == NAMESPACE
    pods = variables["pods"]
    assert pods.endswith("-.*")
    assert pods.removesuffix("-.*") == r.one("Deployment")["metadata"]["name"]
    assert pods.startswith(RELEASE)


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_every_query_selects_this_releases_pods(chart: str) -> None:
    dashboard = load(DASHBOARDS[chart])

    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
    for expr in queries(dashboard):
        selectors = expr.count("{") - expr.count("{{")
        assert metric_names(expr), expr
        assert expr.count('namespace="$namespace", pod=~"$pods"') == selectors, expr


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_a_release_can_leave_the_dashboard_out(
    rendered: dict[tuple[str, str], Rendered], chart: str
) -> None:
    assert rendered[chart, "defaults"].dashboard() is not None
    assert rendered[chart, "no-dashboards"].dashboard() is None
