"""The command-line linters the test extra installs next to this interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(
            f"{name} is not installed next to {sys.executable}: pip install -e '.[test]'"
        )
    return str(path)


def run(args, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, check=False, **kw
    )
