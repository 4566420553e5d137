"""What the command line does with an error: a mistake of the user's is a message and exit 2,
a process that did not come up exit 1, a tool without its libraries names the extra to
install, and a bug is left to be a bug."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from tandem.cli import main, up
from tandem.cli.common import TOOL_LIBRARIES, tools_installed
from tandem.errors import StartupError, ToolsMissingError
from tests.support.installs import python_without

ROOT = Path(__file__).resolve().parents[2]


def test_a_usage_error_is_a_message_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["up", "--aggregated", "2", "--prefill", "1"])

    assert exit.value.code == 2
    assert capsys.readouterr().err == (
        "tandem: choose either --aggregated N or --prefill/--decode, not both\n"
    )


def test_a_bug_is_not_passed_off_as_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(args: argparse.Namespace) -> int:
        raise ValueError("a programming error")

    monkeypatch.setattr(up, "run", buggy)

    with pytest.raises(ValueError, match="a programming error"):
        main(["up"])


def test_a_process_that_did_not_come_up_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(args: argparse.Namespace) -> int:
        raise StartupError("pod-0 exited with status 3")

    monkeypatch.setattr(up, "run", failing)

    with pytest.raises(SystemExit) as exit:
        main(["up"])

    assert exit.value.code == 1
    assert capsys.readouterr().err == "tandem: pod-0 exited with status 3\n"


def test_the_tool_libraries_are_the_tools_extra() -> None:
    """What a tool command names as missing is what `pip install 'tandem[tools]'` installs."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["tools"]

    assert {re.split(r"[<>=!~\[ ]", requirement)[0] for requirement in extra} == set(TOOL_LIBRARIES)


@pytest.mark.parametrize("missing", ["matplotlib", "numpy.linalg", "tandem.planner.run"])
def test_a_tool_without_its_libraries_names_the_extra(missing: str) -> None:
    with pytest.raises(ToolsMissingError, match=r"pip install 'tandem\[tools\]'"):  # noqa: SIM117
        with tools_installed("bench"):
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)


def test_any_other_missing_module_is_not_the_tools_fault() -> None:
    with pytest.raises(ModuleNotFoundError), tools_installed("bench"):
        raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")


def test_without_the_tools_extra_a_tool_says_what_to_install() -> None:
    result = python_without(
        TOOL_LIBRARIES, "from tandem.cli import main\nmain(['bench', 'shared-prefix-small'])"
    )

    assert result.returncode == 2, result.stderr
    assert "pip install 'tandem[tools]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_the_tools_code_the_command_line_offers_the_serving_commands() -> None:
    """As in the serving image, which leaves tandem.bench and tandem.planner out."""
    result = python_without(
        ("tandem.bench", "tandem.planner"),
        "from tandem.cli import build_parser\nbuild_parser().parse_args(['--help'])",
    )

    assert result.returncode == 0, result.stderr
    offered = result.stdout.split("{", 1)[1].split("}", 1)[0]
    assert offered.split(",") == ["sim", "up", "orchestrator", "sidecar"]


def test_tandem_bench_sends_an_elastic_cluster_to_tandem_plan(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["bench", "shifting-mix-small", "--clusters", "elastic-8", "--quick"])

    assert exit.value.code == 2
    message = capsys.readouterr().err
    assert "elastic-8: its pods move between the pools" in message
    assert "`tandem plan shifting-mix-small`" in message
