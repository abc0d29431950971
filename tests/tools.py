"""Helpers shared by the tests: the command-line linters the test extra installs
next to this interpreter, loading a file that is not on the path as a module, and
loading a module of the overlay by its path."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atom_ckfree import project


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


def load_file(path: Path, name: str):
    """Execute the Python file ``path`` as module ``name`` (registered in
    sys.modules, so that its dataclasses and pickling find it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


OVERLAY = Path(__file__).resolve().parents[1] / "overlay"
# the upstream commits the series are written against (patches/project.toml)
PIN = project.load(OVERLAY.parent / "patches").pin
MAIN = project.load(OVERLAY.parent / "patches").base("main").commit


def load_overlay(relpath: str, name: str, interpret: bool = True):
    """``overlay/<relpath>`` as module ``name`` (once: cached in ``sys.modules``).
    ``interpret`` decides whether its Triton kernels are built for the interpreter:
    ``TRITON_INTERPRET`` is read when ``@triton.jit`` runs, i.e. while it loads."""
    if name in sys.modules:
        return sys.modules[name]
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        return load_file(OVERLAY / relpath, name)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
