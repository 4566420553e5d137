"""The committed gRPC stubs are what their .proto files generate (`python -m proto.generate`)."""

from __future__ import annotations

from pathlib import Path

from proto.generate import differing_stubs, generate, main, stub_paths


def test_committed_stubs_match_the_proto_sources() -> None:
    stale = differing_stubs()

    assert stale == [], f"stale gRPC stubs {stale}; regenerate with: python -m proto.generate"


def test_check_names_a_stub_that_differs(tmp_path: Path) -> None:
    generate(tmp_path)
    edited = stub_paths()[0]
    (tmp_path / edited).write_text((tmp_path / edited).read_text() + "# edited by hand\n")
    missing = stub_paths()[-1]
    (tmp_path / missing).unlink()

    assert differing_stubs(tmp_path) == [edited, missing]


def test_check_command_passes_on_the_committed_stubs() -> None:
    assert main(["--check"]) == 0
