"""The structure as designed: which top-level package may import which, and no loops.

Every import in a package's modules (lazy ones inside functions and `TYPE_CHECKING` ones
too) must name a package its row allows. Change the table only with the design: a new
arrow is a decision, not a fix for a failing test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ALLOWED: dict[str, frozenset[str]] = {
    # Shared foundations: KV block facts, the Pick API's stubs, and what the services share
    # (endpoints, errors, proxying, how a vLLM server is launched).
    "proto": frozenset(),
    "kvcache": frozenset(),
    "mesh": frozenset({"kvcache"}),
    # How fast a vLLM pod runs (profiles, step-time model, capacity within an SLO), and the
    # vLLM server that runs a profile.
    "costmodel": frozenset({"mesh"}),
    # The services: pods know nothing of the orchestrator; the sidecar nothing of either.
    "simulator": frozenset({"costmodel", "kvcache", "mesh"}),
    "orchestrator": frozenset({"costmodel", "kvcache", "mesh", "proto"}),
    "sidecar": frozenset({"mesh"}),
    # The pools' definitions (a vLLM launch each, from an engine profile), and clusters of them.
    "prefill": frozenset({"costmodel", "mesh"}),
    "decode": frozenset({"costmodel", "mesh"}),
    "cluster": frozenset(
        {"costmodel", "decode", "kvcache", "mesh", "orchestrator", "prefill", "simulator"}
    ),
    # Measuring and planning.
    "bench": frozenset({"cluster", "costmodel", "kvcache", "mesh", "orchestrator", "simulator"}),
    "planner": frozenset(
        {"bench", "cluster", "costmodel", "kvcache", "mesh", "orchestrator", "sidecar", "simulator"}
    ),
    # The command line uses everything.
    "tandem": frozenset(
        {
            "bench",
            "cluster",
            "costmodel",
            "decode",
            "kvcache",
            "mesh",
            "orchestrator",
            "planner",
            "prefill",
            "proto",
            "sidecar",
            "simulator",
        }
    ),
}

HTTP_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "kubernetes")


def package_imports(root: Path, packages: Mapping[str, object]) -> dict[str, dict[str, str]]:
    """package → {imported package: the first `file:line` that imports it}, for imports of
    other packages in `packages` (absolute imports; relative ones stay inside a package)."""
    found: dict[str, dict[str, str]] = {package: {} for package in packages}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in packages and top != package:
                        where = f"{path.relative_to(root)}:{node.lineno}"
                        found[package].setdefault(top, where)
    return found


def forbidden_imports(
    imports: Mapping[str, Mapping[str, str]], allowed: Mapping[str, frozenset[str]]
) -> list[str]:
    return [
        f"{where}: {package} imports {target}"
        for package, targets in imports.items()
        for target, where in targets.items()
        if target not in allowed[package]
    ]


def cycle(graph: Mapping[str, frozenset[str] | Mapping[str, object]]) -> list[str] | None:
    """A loop in `graph` (as the list of its packages), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in graph.get(node, ()):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        state[node] = "done"
        path.pop()
        return None

    for node in graph:
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_every_top_level_package_has_a_row() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests"}

    assert packages == set(ALLOWED)


def test_every_import_between_packages_is_allowed() -> None:
    assert forbidden_imports(package_imports(ROOT, ALLOWED), ALLOWED) == []


def test_neither_the_table_nor_the_code_has_a_loop() -> None:
    assert cycle(ALLOWED) is None
    assert cycle(package_imports(ROOT, ALLOWED)) is None


def test_a_forbidden_import_is_reported_with_its_place(tmp_path: Path) -> None:
    for package in ("sidecar", "orchestrator", "mesh"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "sidecar" / "app.py").write_text(
        "from mesh.proxy import relay\n\ndef later():\n    from orchestrator.router import Router\n"
    )
    allowed = {"sidecar": frozenset({"mesh"}), "orchestrator": frozenset(), "mesh": frozenset()}

    problems = forbidden_imports(package_imports(tmp_path, allowed), allowed)

    assert problems == ["sidecar/app.py:4: sidecar imports orchestrator"]


def test_a_loop_is_found() -> None:
    assert cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == [
        "a", "b", "c", "a",
    ]  # fmt: skip
    assert cycle({"a": frozenset({"b"}), "b": frozenset()}) is None


@pytest.mark.parametrize(
    "module",
    [
        "orchestrator.router",
        "orchestrator.inference_request",
        "orchestrator.scheduling.config",
        "orchestrator.config",
        "planner.cluster",
    ],
)
def test_the_routing_core_loads_no_http_framework(module: str) -> None:
    """Importing the scheduler, the router or the virtual-time cluster loads no web framework
    and no Kubernetes client, even indirectly."""
    code = (
        f"import sys, {module}\n"
        f"print(','.join(sorted(m for m in {HTTP_FRAMEWORKS!r} if m in sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()

    assert loaded == ""
