"""The committed gRPC stubs are what their .proto files generate (`python proto/generate.py`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    """proto/generate.py, a script of the repository rather than a module of the package."""
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generator = load_generator()


def test_committed_stubs_match_the_proto_sources() -> None:
    stale = generator.differing_stubs()

    assert stale == [], f"stale gRPC stubs {stale}; regenerate with: python proto/generate.py"


def test_check_names_a_stub_that_differs(tmp_path: Path) -> None:
    generator.generate(tmp_path)
    edited = generator.stub_paths()[0]
    (tmp_path / edited).write_text((tmp_path / edited).read_text() + "# edited by hand\n")
    missing = generator.stub_paths()[-1]
    (tmp_path / missing).unlink()

    assert generator.differing_stubs(tmp_path) == [edited, missing]


def test_check_command_passes_on_the_committed_stubs() -> None:
    assert generator.main(["--check"]) == 0


def test_the_stubs_import_each_other_inside_the_package() -> None:
    stubs = (ROOT / "tandem" / "v1" / "pick_pb2_grpc.py").read_text()

    assert "from tandem.v1 import pick_pb2" in stubs
