"""The Grafana dashboards the charts ship, and the metric names their queries read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CHARTS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm"
DASHBOARDS = {
    "tandem-orchestrator": CHARTS_DIR / "tandem-orchestrator" / "dashboards" / "orchestrator.json",
    "tandem-prefill": CHARTS_DIR / "tandem-prefill" / "dashboards" / "prefill.json",
    "tandem-decode": CHARTS_DIR / "tandem-decode" / "dashboards" / "decode.json",
}
"""Each chart's dashboard, by chart."""

# Every selector in a shipped query carries label matchers ({namespace=..., pod=~...}), so a
# metric name is the identifier right before a `{`.
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def load(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    return set(_SELECTOR.findall(expr))


def exposed_series(exposition: str) -> set[str]:
    """The series names a Prometheus text exposition offers: every sample's name, and for
    each declared family the names its type implies (a labelled counter or histogram that
    has not been touched yet shows only its `# TYPE` line)."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + suffix for suffix in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
