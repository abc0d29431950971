"""Fault, race and bad-input tests: the CLI run as a user runs it, in a subprocess, on a
real ATOM tree at the pin; each case compares the whole state of the tree before and
after, byte for byte.

``tree_state(path)`` is that state: every file's bytes and mode outside ``.git``, the
index (``git ls-files --stage`` and the index file's bytes), HEAD (symbolic and
resolved), every ref, and what lies in ``.git`` besides git's own files (a lock or
journal left behind shows there).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# report.progress's lines off a terminal: "apply 2/7 [1.3 s] …", "apply done [2.0 s]"
PROGRESS = re.compile(r"^[a-z]+ (\d+/\d+|done) \[\d+\.\d s\]")
GIT_OWN = {
    "HEAD",
    "config",
    "description",
    "hooks",
    "index",
    "info",
    "logs",
    "objects",
    "refs",
    "packed-refs",
    "ORIG_HEAD",
    "COMMIT_EDITMSG",
    "FETCH_HEAD",
    "shallow",
    "branches",
    "worktrees",
}


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=tree, capture_output=True, text=True, check=False
    ).stdout


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_state(tree: Path) -> dict:
    files = {}
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree)
        if rel.parts[0] == ".git":
            continue
        mode = path.lstat().st_mode
        files[str(rel)] = (oct(mode), _digest(path) if path.is_file() else None)
    git_dir = tree / ".git"
    return {
        "files": files,
        "index": _git(tree, "ls-files", "--stage", "-z"),
        "index_bytes": (
            _digest(git_dir / "index") if (git_dir / "index").exists() else None
        ),
        "head": _git(tree, "symbolic-ref", "-q", "HEAD")
        + _git(tree, "rev-parse", "HEAD"),
        "refs": _git(tree, "for-each-ref", "--format=%(refname) %(objectname)"),
        "git_extra": sorted(p.name for p in git_dir.iterdir() if p.name not in GIT_OWN),
    }


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The error, which must be one line (git's text may follow indented);
        the plain progress lines a verb prints off a terminal are not part of it."""
        lines = [
            line
            for line in self.err.splitlines()
            if line.strip() and not PROGRESS.match(line)
        ]
        head = [line for line in lines if not line.startswith("    ")]
        assert "Traceback" not in self.err, self.err
        assert len(head) == 1, f"expected one error line, got:\n{self.err}"
        return head[0]


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 120
) -> Run:
    """``apply-patches ARGS`` in a subprocess with this interpreter."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "apply_patches.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=timeout,
    )
    return Run(result.returncode, result.stdout, result.stderr)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def state():
    return tree_state
