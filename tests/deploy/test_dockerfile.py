"""deploy/Dockerfile, read as text (it is not built here): one non-root image with the serving
install and nothing of the tools or the development setup (test_packaging.py builds the wheel
the image would install, from the same context)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tandem.cli.common import TOOL_PACKAGES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def arguments(keyword: str) -> list[str]:
    return [rest for name, rest in instructions() if name == keyword]


def test_two_stages_on_python_3_11_slim() -> None:
    assert arguments("FROM") == ["python:3.11-slim AS build", "python:3.11-slim"]
    assert "--from=build /opt/tandem /opt/tandem" in arguments("COPY")


def test_installs_the_project_without_editable_mode_or_dev_extras() -> None:
    run = " ".join(arguments("RUN"))

    assert "/opt/tandem/bin/pip install . " in run
    assert "-e" not in run.split()
    assert "[dev]" not in run


def test_copies_every_package_the_project_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = arguments("COPY")

    for package in packages:
        assert f"{package}/ {package}/" in copied, package
    assert "pyproject.toml README.md ./" in copied


def test_runs_as_uid_10001_unbuffered_on_port_8000_without_an_entrypoint() -> None:
    assert arguments("USER") == ["10001"]
    assert "PYTHONUNBUFFERED=1" in " ".join(arguments("ENV"))
    assert arguments("EXPOSE") == ["8000"]
    assert arguments("ENTRYPOINT") == []
    assert "--uid 10001" in " ".join(arguments("RUN"))


def test_dockerignore_leaves_out_the_development_files() -> None:
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert {".git", ".venv", "tests", "results", ".mypy_cache", ".pytest_cache"} <= ignored
    assert {".ruff_cache", "**/__pycache__"} <= ignored
    assert {package.replace(".", "/") for package in TOOL_PACKAGES} <= ignored  # the tools
    assert not ignored & {"pyproject.toml", "README.md", "tandem", "orchestrator", "sidecar"}
