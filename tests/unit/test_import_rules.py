"""The structure as designed: which package of `tandem` may import which, and no loops.

Every import in a package's modules (lazy ones inside functions and `TYPE_CHECKING` ones
too) must name a package its row allows. Change the table only with the design: a new
arrow is a decision, not a fix for a failing test. The README's dependency table is this
table, and a test holds the two equal.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tandem.cli.common import TOOL_LIBRARIES, TOOL_PACKAGES
from tests.support.installs import python_without

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tandem"

FOUNDATIONS = frozenset({"errors", "logs"})
"""tandem's exception hierarchy and its event log: every package may import them."""

DESIGN: dict[str, frozenset[str]] = {
    # Foundations: the Pick API's generated stubs, KV block facts, and how fast a vLLM pod runs.
    "v1": frozenset(),
    "kvcache": frozenset(),
    "costmodel": frozenset(),
    # What the services share: the HTTP hops, and endpoints with their discovery.
    "http": frozenset(),
    "discovery": frozenset(),
    # What a pod is (its pool, its vLLM launch), and the two pools of a P/D deployment.
    "pods": frozenset({"costmodel", "http", "kvcache"}),
    "prefill": frozenset({"pods"}),
    "decode": frozenset({"pods"}),
    # The services: pods know nothing of the orchestrator; the sidecar nothing of either.
    "simulator": frozenset({"costmodel", "http", "kvcache", "pods"}),
    "orchestrator": frozenset({"costmodel", "discovery", "http", "kvcache", "v1"}),
    "sidecar": frozenset({"discovery", "http"}),
    # Clusters of pods on one machine, measuring and planning.
    "cluster": frozenset({"decode", "kvcache", "orchestrator", "pods", "prefill", "simulator"}),
    "bench": frozenset({"cluster", "costmodel", "discovery", "kvcache", "orchestrator"}),
    "planner": frozenset(
        {
            "bench",
            "cluster",
            "costmodel",
            "discovery",
            "kvcache",
            "orchestrator",
            "pods",
            "sidecar",
            "simulator",
        }
    ),
}
"""Which package may import which, besides the foundations."""

ALLOWED: dict[str, frozenset[str]] = {
    **{foundation: frozenset() for foundation in FOUNDATIONS},
    **{package: allowed | FOUNDATIONS for package, allowed in DESIGN.items()},
    "cli": FOUNDATIONS | frozenset(DESIGN),  # the command line uses everything
}

COMPONENTS = ("orchestrator", "prefill", "decode", "sidecar")
"""The component folders at the repository's root, which enter the package as
`tandem.<component>` (through the links `tandem/<component>`)."""

HTTP_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "kubernetes")


def packages_of(package_dir: Path) -> dict[str, list[Path]]:
    """Each package (a folder) or module directly under `package_dir`, with its files."""
    found: dict[str, list[Path]] = {}
    for path in sorted(package_dir.iterdir()):
        if path.name.startswith("__"):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            found[path.name] = sorted(path.resolve().rglob("*.py"))
        elif path.suffix == ".py":
            found[path.stem] = [path]
    return found


def imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """Every module an absolute import in `path` names, with its line."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            for alias in node.names:  # `from tandem import errors` names a module too
                yield f"{node.module}.{alias.name}", node.lineno


def package_imports(
    packages: Mapping[str, object], package_dir: Path = PACKAGE, root: Path = ROOT
) -> dict[str, dict[str, str]]:
    """package → {imported package: the first `file:line` (relative to `root`) that imports
    it}, for imports between the packages of `package_dir` named in `packages`."""
    found: dict[str, dict[str, str]] = {package: {} for package in packages}
    for package, files in packages_of(package_dir).items():
        if package not in packages:
            continue
        for path in files:
            for module, line in imported_modules(path):
                parts = module.split(".")
                if parts[0] != package_dir.name or len(parts) < 2 or parts[1] == package:
                    continue
                if parts[1] in packages:
                    found[package].setdefault(parts[1], f"{path.relative_to(root)}:{line}")
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


def readme_table(text: str) -> dict[str, frozenset[str]]:
    """The README's dependency table (`| package | may import |`) as package → packages; a
    row saying "every" allows every other package."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*package\s*\|", line))
    table: dict[str, frozenset[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        _, packages, allowed, *_ = line.split("|")
        names = re.findall(r"`([\w.]+)`", allowed)
        for package in re.findall(r"`([\w.]+)`", packages):
            table[package] = frozenset({"every"} if "every" in allowed else names)
    every = frozenset(table)
    return {p: every - {p} if allowed == {"every"} else allowed for p, allowed in table.items()}


def test_every_package_has_a_row() -> None:
    assert set(packages_of(PACKAGE)) == set(ALLOWED)


def test_every_import_between_packages_is_allowed() -> None:
    assert forbidden_imports(package_imports(ALLOWED), ALLOWED) == []


def test_neither_the_table_nor_the_code_has_a_loop() -> None:
    assert cycle(ALLOWED) is None
    assert cycle(package_imports(ALLOWED)) is None


def test_the_readme_draws_the_same_table() -> None:
    assert readme_table((ROOT / "README.md").read_text()) == {
        **{foundation: frozenset() for foundation in FOUNDATIONS},
        **DESIGN,
        "cli": FOUNDATIONS | frozenset(DESIGN),
    }


def test_the_component_folders_are_the_packages_components() -> None:
    for component in COMPONENTS:
        link = PACKAGE / component
        assert link.is_symlink(), f"tandem/{component} must link to ../{component}"
        assert link.resolve() == ROOT / component


def test_code_imports_tandem_only_under_its_own_name() -> None:
    """No module imports a component or a former top-level package by a bare name (which would
    load a second copy of it, or fail once installed)."""
    former = ("mesh", "proto", "simulator", "cluster", "bench", "planner", "kvcache", "costmodel")
    bare = {*COMPONENTS, *former}
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    sources += [path for component in COMPONENTS for path in (ROOT / component).rglob("*.py")]
    offending = sorted(
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in sources
        for module, line in imported_modules(path)
        if module.split(".")[0] in bare
    )

    assert offending == []


def test_a_forbidden_import_is_reported_with_its_place(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    for name in ("sidecar", "orchestrator", "http"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "sidecar" / "app.py").write_text(
        "from pkg.http.proxy import relay\n\n"
        "def later():\n    from pkg.orchestrator.router import Router\n"
    )
    allowed = {"sidecar": frozenset({"http"}), "orchestrator": frozenset(), "http": frozenset()}

    problems = forbidden_imports(package_imports(allowed, package, tmp_path), allowed)

    assert problems == ["pkg/sidecar/app.py:4: sidecar imports orchestrator"]


def test_a_loop_is_found() -> None:
    assert cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == [
        "a", "b", "c", "a",
    ]  # fmt: skip
    assert cycle({"a": frozenset({"b"}), "b": frozenset()}) is None


def test_the_readme_table_is_read_row_by_row() -> None:
    text = (
        "Intro.\n\n| package | may import |\n|---|---|\n"
        "| `a`, `b` | — |\n| `c` | `a` |\n| `cli` | every other package |\n\nAfter.\n"
    )

    assert readme_table(text) == {
        "a": frozenset(),
        "b": frozenset(),
        "c": frozenset({"a"}),
        "cli": frozenset({"a", "b", "c"}),
    }


@pytest.mark.parametrize(
    "module",
    [
        "tandem.orchestrator.router",
        "tandem.orchestrator.inference_request",
        "tandem.orchestrator.scheduling.config",
        "tandem.orchestrator.config",
        "tandem.planner.cluster",
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


SERVING_MODULES = (
    "tandem.cli",
    "tandem.cli.up",
    "tandem.cli.console",
    "tandem.orchestrator.app",
    "tandem.sidecar.app",
    "tandem.simulator.server",
    "tandem.cluster.local",
)
"""What the serving commands run: the orchestrator, the sidecar, the simulated pod, `tandem
up`."""


def test_the_serving_install_runs_without_the_tools() -> None:
    """The orchestrator, the sidecar, the simulated pod and `tandem up` (and the command line
    they start from) import fine where neither the `tools` extra's libraries nor the tools
    themselves are installed."""
    code = (
        "import importlib\n"
        f"for name in {SERVING_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "importlib.import_module('tandem.cli').build_parser()\n"
    )

    result = python_without((*TOOL_LIBRARIES, *TOOL_PACKAGES), code)

    assert result.returncode == 0, result.stderr
