"""Python processes as an install without some packages would run them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def python_without(modules: Sequence[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a Python where importing any of `modules` (or a module inside one) fails
    as it does where they are not installed."""
    blocker = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.startswith({tuple(modules)!r}):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, NotInstalled())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", blocker + code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
