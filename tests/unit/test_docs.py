"""The documentation points at what exists: every relative link in a Markdown file, and every
repository path the hand-written pages name in backticks, resolves in the tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PAGES = sorted(
    path
    for path in ROOT.rglob("*.md")
    if not {".venv", ".venv-vllm", ".git", "node_modules", ".tandem"} & set(path.parts)
    and ".pytest_cache" not in path.parts
)
WRITTEN = [page for page in PAGES if page.name != "report.md"]
"""The pages people write (bench and plan write the reports)."""

LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"`([\w-]+/[\w./-]*)`")
"""A relative path in backticks: a folder, then more (`llm-d.ai/role`-like names have a dot
in their first part and are no paths)."""
FILE_OR_FOLDER = re.compile(r"(/|\.(py|md|yaml|json|proto|png|toml|tpl|txt))$")
PLACEHOLDER = re.compile(r"[*<>{}]|\.\.\.")
OUTPUTS = ("results/",)
"""Folders tandem writes when it runs, named in the docs but not in the tree."""


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file is missing."""
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if not (page.parent / path).exists():
            missing.append(target)
    return missing


def missing_paths(text: str, root: Path = ROOT, here: Path = ROOT) -> list[str]:
    """The files and folders named in backticks in `text` (a page in `here`) that exist
    neither under the repository's `root` nor beside the page."""
    return [
        path
        for path in PATH.findall(text)
        if FILE_OR_FOLDER.search(path)
        and not PLACEHOLDER.search(path)
        and not path.startswith(OUTPUTS)
        and not (root / path).exists()
        and not (here / path).exists()
    ]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", WRITTEN, ids=[str(p.relative_to(ROOT)) for p in WRITTEN])
def test_named_paths_exist(page: Path) -> None:
    assert missing_paths(page.read_text(), here=page.parent) == []


def test_a_moved_file_is_caught(tmp_path: Path) -> None:
    (tmp_path / "tandem").mkdir()
    (tmp_path / "tandem" / "here.py").write_text("")
    page = tmp_path / "page.md"
    page.write_text("See [it](tandem/gone.py), [that](tandem/here.py) and `tandem/gone.py`.\n")
    text = "`tandem/here.py`, `tandem/gone.py`, `gone/`, `tandem/*.py`, `llm-d.ai/role`"

    assert broken_links(page) == ["tandem/gone.py"]
    assert missing_paths(text, tmp_path, tmp_path) == ["tandem/gone.py", "gone/"]


def test_there_is_one_operator_guide() -> None:
    titled = [
        page.relative_to(ROOT).as_posix()
        for page in WRITTEN
        if re.search(r"^# .*operator guide", page.read_text(), re.IGNORECASE | re.MULTILINE)
    ]

    assert titled == ["docs/operator-guide.md"]
