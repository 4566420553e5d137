"""What `pip install` puts in site-packages: one import name, `tandem`, holding every component
and the files they read; and the image's install, built from what deploy/Dockerfile copies,
with the serving commands and none of the tools."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy.test_dockerfile import DOCKERIGNORE, arguments

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(source: Path, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(into), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = into.glob("tandem-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` installs from this tree (built from a copy of its tracked
    files: a build in place would leave build/ behind)."""
    source = copy_tracked(tmp_path_factory.mktemp("source"), lambda path: True)
    return build_wheel(source, tmp_path_factory.mktemp("wheel"))


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore of `patterns` leaves `path` out of the context (the patterns this
    one uses: paths, their folders, and `**/`)."""
    parts = path.split("/")
    for pattern in patterns:
        name = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(part, name) for part in parts) and pattern.startswith("**/"):
            return True
        if any(fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
            return True
    return False


def image_context(into: Path) -> Path:
    """What deploy/Dockerfile copies into its build stage, from the tracked files of the
    context its .dockerignore leaves."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [rest.split()[0].rstrip("/") for rest in arguments("COPY") if "--from" not in rest]
    return copy_tracked(
        into,
        lambda path: (
            not ignored(path, patterns)
            and any(path == c or path.startswith(f"{c}/") for c in copied)
        ),
    )


def copy_tracked(into: Path, keep: Callable[[str], bool]) -> Path:
    """The repository's tracked files that `keep` keeps, links as links, under `into`."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for path in filter(keep, tracked):
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        source = ROOT / path
        if source.is_symlink():
            target.symlink_to(source.readlink())
        else:
            shutil.copy2(source, target)
    return into


def python_with(site: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` with `site` holding an installed wheel, before this Python's own packages
    (which are read as plain folders: no .pth file runs, so the editable install of this tree
    stays out), from a folder outside the repository."""
    own = [p for p in sys.path if p.endswith("site-packages")]
    return subprocess.run(
        [sys.executable, "-S", "-c", code, *args],
        env={"PYTHONPATH": ":".join([str(site), *own])},
        cwd=site,
        capture_output=True,
        text=True,
    )


def top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist()}


def files(wheel: Path) -> Iterator[str]:
    with zipfile.ZipFile(wheel) as archive:
        yield from archive.namelist()


def test_the_install_has_one_import_name(wheel: Path) -> None:
    assert top_level_names(wheel) == {"tandem", "tandem-0.1.0.dist-info"}


def test_the_install_holds_the_components_and_the_files_they_read(wheel: Path) -> None:
    names = set(files(wheel))

    for component in ("orchestrator", "prefill", "decode", "sidecar"):
        assert f"tandem/{component}/__init__.py" in names
    assert "tandem/orchestrator/configs/tandem.yaml" in names
    assert "tandem/bench/workloads/shared-prefix-small.yaml" in names
    assert {f"tandem/v1/pick_pb2{end}" for end in (".py", ".pyi", "_grpc.py")} <= names


def test_installed_beside_proto_plus_both_import(wheel: Path, tmp_path: Path) -> None:
    """proto-plus (which every google-cloud client pulls in) is the `proto` package; tandem's
    stubs must not land in it."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    code = (
        "import proto, tandem.v1.pick_pb2 as pick\n"
        "assert proto.Message.__module__.startswith('proto'), proto.__file__\n"
        "assert pick.__file__.startswith(sys.argv[1]), pick.__file__\n"
        "print(proto.__file__)"
    )

    result = python_with(tmp_path, "import sys\n" + code, str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert not result.stdout.startswith(str(tmp_path))


def test_the_image_installs_the_serving_commands_without_the_tools(tmp_path: Path) -> None:
    image_wheel = build_wheel(image_context(tmp_path / "context"), tmp_path / "wheel")
    names = set(files(image_wheel))
    with zipfile.ZipFile(image_wheel) as archive:
        archive.extractall(tmp_path / "site")
    code = "from tandem.cli import main\nmain(['--help'])"

    result = python_with(tmp_path / "site", code)

    assert not any(name.startswith(("tandem/bench/", "tandem/planner/")) for name in names)
    assert "tandem/orchestrator/configs/tandem.yaml" in names
    assert result.returncode == 0, result.stderr
    assert "{sim,up,orchestrator,sidecar}" in result.stdout
