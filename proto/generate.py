"""Generate the Python stubs of tandem's gRPC API from its .proto sources.

    python proto/generate.py            # (re)write the stubs under tandem/
    python proto/generate.py --check    # exit 1, listing the stubs that differ

The same as `python -m grpc_tools.protoc -I proto --python_out=. --pyi_out=.
--grpc_python_out=. proto/<file>.proto` run from the repository root: a .proto's path under
proto/ is its Python module's (`proto/tandem/v1/pick.proto` → `tandem.v1.pick_pb2`), so the
stubs land in tandem's package and import each other as `tandem.v1...`. The output depends on
the grpcio-tools version (pinned in pyproject.toml's dev extra), which is why the stubs are
committed and checked.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
PROTOS = ("tandem/v1/pick.proto",)
"""The API's sources, relative to proto/ (and their stubs' paths, relative to the root)."""
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def stub_paths() -> list[str]:
    """Every generated file, relative to the repository root (or an output folder)."""
    return [p.removesuffix(".proto") + suffix for p in PROTOS for suffix in STUB_SUFFIXES]


def generate(out_dir: Path) -> None:
    """Write the stubs of every .proto under `out_dir`, laid out as in the repository."""
    # `python -m grpc_tools.protoc` adds the bundled well-known types to the include path;
    # the in-process entry point does not, so add them here to give the same output.
    well_known = resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *(str(PROTO_DIR / path) for path in PROTOS),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}; its message is above")


def differing_stubs(root: Path = REPO_ROOT) -> list[str]:
    """The stubs under `root` that are missing or differ from what the .proto files give."""
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        return [
            path
            for path in stub_paths()
            if not (root / path).is_file()
            or (root / path).read_bytes() != (Path(scratch) / path).read_bytes()
        ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python proto/generate.py", description="Generate tandem's gRPC Python stubs."
    )
    parser.add_argument(
        "--check", action="store_true",
        help="write nothing; exit 1 and list the committed stubs that differ from the .proto",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.check:
        generate(REPO_ROOT)
        return 0
    stale = differing_stubs()
    for path in stale:
        print(f"{path}: differs from what its .proto generates", file=sys.stderr)
    if stale:
        print("regenerate with: python proto/generate.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
