"""docs/plugins.md stays true: its worked example, a scorer plugin, runs against the real
scheduler. The page's plugin module is executed, its diff applies to the real
`builtin_registry()`, its YAML builds a scheduler with the real configuration loader, and the
page's own tests run under pytest against that scheduler."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import tandem.orchestrator.scheduling.plugins as plugins
from tandem.orchestrator.scheduling.config import build_scheduler, parse_config
from tandem.orchestrator.scheduling.plugins import builtin_registry
from tandem.orchestrator.scheduling.registry import Plugin, PluginRegistry

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "plugins.md"

FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PLUGIN_IMPORT = re.compile(
    r"^from (tandem\.orchestrator\.scheduling\.plugins\.\w+) import (\w+)$", re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class Guide:
    """The page's example: the plugin module, its registration, its configuration, its tests."""

    module: str
    registration: str
    config: str
    tests: str

    @property
    def plugin_import(self) -> tuple[str, str]:
        """The plugin's module and class, as the page's tests import them."""
        found = PLUGIN_IMPORT.findall(self.tests)
        assert len(found) == 1, "the page's tests import the example plugin by one import line"
        module, name = found[0]
        return module, name


def fenced_blocks(text: str) -> dict[str, list[str]]:
    """A Markdown text's fenced code blocks by their language, in order."""
    blocks: dict[str, list[str]] = {}
    for language, body in FENCE.findall(text):
        blocks.setdefault(language, []).append(body)
    return blocks


def read_guide(text: str) -> Guide:
    """The page's fenced blocks: two `python` (the plugin module, then its tests), one `diff`
    (the registration) and one `yaml` (the configuration)."""
    blocks = fenced_blocks(text)
    python, diff, config = blocks.get("python", []), blocks.get("diff", []), blocks.get("yaml", [])
    assert len(python) == 2, "the page's python blocks are the plugin module, then its tests"
    assert len(diff) == 1, "the page's one diff block registers the plugin"
    assert len(config) == 1, "the page's one yaml block configures the plugin"
    return Guide(module=python[0], registration=diff[0], config=config[0], tests=python[1])


def apply_diff(diff: str, root: Path) -> tuple[Path, str]:
    """The file a one-file unified diff changes, and its text with the diff applied. Each hunk's
    old lines (context and removed) must occur exactly once in the file."""
    lines = diff.splitlines()
    target = next(line for line in lines if line.startswith("+++ "))
    path = root / target.removeprefix("+++ ").removeprefix("b/")
    text = path.read_text()
    hunks: list[list[str]] = []
    for line in lines:
        if line.startswith(("--- ", "+++ ")):
            continue
        if line.startswith("@@"):
            hunks.append([])
        else:
            hunks[-1].append(line)
    for hunk in hunks:
        old = "".join(line[1:] + "\n" for line in hunk if not line.startswith("+"))
        new = "".join(line[1:] + "\n" for line in hunk if not line.startswith("-"))
        assert text.count(old) == 1, f"the diff's hunk does not fit {path.name}:\n{old}"
        text = text.replace(old, new)
    return path, text


def execute(module: ModuleType, source: str, origin: str) -> ModuleType:
    """`module`, with `source` executed in it (`origin` names the source in tracebacks)."""
    module.__file__ = origin
    exec(compile(source, origin, "exec"), vars(module))
    return module


@pytest.fixture
def guide() -> Guide:
    return read_guide(PAGE.read_text())


@pytest.fixture
def plugin_module(guide: Guide, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The page's plugin module, importable under the name the page's tests import it by."""
    name, _ = guide.plugin_import
    module = ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)  # before it runs: pydantic looks it up
    return execute(module, guide.module, f"docs/plugins.md ({name})")


@pytest.fixture
def plugin(guide: Guide, plugin_module: ModuleType) -> type[Plugin]:
    found = getattr(plugin_module, guide.plugin_import[1])
    assert isinstance(found, type)
    assert issubclass(found, Plugin)
    return found


@pytest.fixture
def registry(plugin: type[Plugin]) -> PluginRegistry:
    """tandem's registry with the page's plugin registered, as the page's diff registers it."""
    registry = builtin_registry()
    registry.register(plugin)
    return registry


def test_the_example_is_not_one_of_tandems_plugins(guide: Guide) -> None:
    """A plugin of that name in the package would make the example nothing new (and its
    registration a duplicate): the page then needs another example."""
    module, _ = guide.plugin_import
    type_names = re.findall(r'^    type_name = "([\w-]+)"$', guide.module, re.MULTILINE)

    assert len(type_names) == 1
    assert type_names[0] not in builtin_registry().type_names
    assert not (Path(plugins.__file__).parent / f"{module.rsplit('.', 1)[1]}.py").exists()


def test_the_diff_registers_the_plugin_in_builtin_registry(
    guide: Guide, plugin: type[Plugin]
) -> None:
    path, patched = apply_diff(guide.registration, ROOT)
    registered = execute(ModuleType("plugin_guide_registry"), patched, f"{path} (patched)")

    registry = registered.builtin_registry()

    assert path.resolve() == Path(plugins.__file__).resolve()
    assert registry.get(plugin.type_name) is plugin
    assert set(registry.type_names) == {*builtin_registry().type_names, plugin.type_name}


def test_the_configuration_weighs_the_plugin(
    guide: Guide, plugin: type[Plugin], registry: PluginRegistry
) -> None:
    document = yaml.safe_load(guide.config)
    (spec,) = [p for p in document["plugins"] if p["type"] == plugin.type_name]
    name = spec.get("name", plugin.type_name)
    weights = [
        (profile["name"], float(ref.get("weight", 1)))
        for profile in document["schedulingProfiles"]
        for ref in profile["plugins"]
        if ref["pluginRef"] == name
    ]

    scheduler = build_scheduler(parse_config(document), registry=registry)

    instance = scheduler.plugins[name]
    assert isinstance(instance, plugin)
    assert instance.parameters == plugin.Parameters.model_validate(spec.get("parameters", {}))
    assert weights
    assert [
        (profile.name, weighted.weight)
        for profile in scheduler.profiles.values()
        for weighted in profile.scorers
        if weighted.scorer.name == name
    ] == weights


CONFTEST = """
import random, sys, types

import pytest
import yaml

from tandem.orchestrator.scheduling.config import build_scheduler, parse_config
from tandem.orchestrator.scheduling.plugins import builtin_registry

plugin_module = types.ModuleType({name!r})
sys.modules[{name!r}] = plugin_module
exec(compile({source!r}, "docs/plugins.md (the plugin)", "exec"), vars(plugin_module))


@pytest.fixture
def scheduler():
    registry = builtin_registry()
    registry.register(getattr(plugin_module, {cls!r}))
    document = yaml.safe_load({config!r})
    return build_scheduler(parse_config(document), registry=registry, rng=random.Random(0))
"""
"""The page's plugin, importable by the name its tests use, and the `scheduler` fixture they
take: the page's configuration built with the plugin registered."""


def test_the_pages_tests_pass_against_the_configured_scheduler(
    guide: Guide, tmp_path: Path
) -> None:
    name, cls = guide.plugin_import
    (tmp_path / "conftest.py").write_text(
        CONFTEST.format(name=name, source=guide.module, cls=cls, config=guide.config)
    )
    (tmp_path / "test_plugin_page.py").write_text(guide.tests)

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"\b\d+ passed\b", result.stdout)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("```python\na\n```\n```diff\nb\n```\n", {"python": ["a\n"], "diff": ["b\n"]}),
        pytest.param("```python\n```\n", {"python": [""]}, id="empty"),
        pytest.param("`x` and ```` ```", {}, id="no-fence"),
    ],
)
def test_fences_are_read_by_language(text: str, expected: dict[str, list[str]]) -> None:
    assert fenced_blocks(text) == expected


def test_a_diff_that_no_longer_fits_is_caught(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("a = 1\nb = 2\n")
    fits = "--- a/m.py\n+++ b/m.py\n@@ @@\n a = 1\n+c = 3\n b = 2\n"
    stale = "--- a/m.py\n+++ b/m.py\n@@ @@\n a = 1\n-d = 4\n"

    assert apply_diff(fits, tmp_path) == (tmp_path / "m.py", "a = 1\nc = 3\nb = 2\n")
    with pytest.raises(AssertionError, match="does not fit"):
        apply_diff(stale, tmp_path)
