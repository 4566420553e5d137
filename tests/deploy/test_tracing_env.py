"""Exporting spans from a release: the orchestrator's and the sidecar's containers take the
OpenTelemetry environment; without it they export nothing."""

from __future__ import annotations

from tests.deploy.conftest import OTLP_ENV, Rendered


def test_the_orchestrator_and_the_sidecar_take_the_opentelemetry_environment(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    orchestrator = rendered["tandem-orchestrator", "tracing"].container("orchestrator")
    sidecar = rendered["tandem-decode", "tracing"].container("sidecar", init=True)

    assert OTLP_ENV in orchestrator["env"]
    assert OTLP_ENV in sidecar["env"]


def test_by_default_no_container_names_a_collector(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    orchestrator = rendered["tandem-orchestrator", "defaults"].container("orchestrator")
    sidecar = rendered["tandem-decode", "defaults"].container("sidecar", init=True)

    for container in (orchestrator, sidecar):
        names = {variable["name"] for variable in container.get("env", [])}
        assert not {n for n in names if n.startswith("OTEL_")}
