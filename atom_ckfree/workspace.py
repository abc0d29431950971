"""An ATOM work tree: recognising one, and the few git operations the tool needs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .errors import UserError


def git(
    cwd: Path | str,
    *args: str,
    check: bool = True,
    strip: bool = True,
    env: dict | None = None,
) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env} if env else None,
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, ["git", *args], result.stdout, result.stderr
        )
    return result.stdout.strip() if strip else result.stdout


def git_dir(tree: Path) -> Path:
    """The git dir of ``tree``: its ``.git``, or ``.git/worktrees/NAME`` of a worktree."""
    return Path(git(tree, "rev-parse", "--absolute-git-dir"))


class AtomTree:
    """A git work tree whose top holds ATOM (``atom/`` package, project ``atom``)."""

    def __init__(self, path: Path | str, commit_env: dict | None = None):
        self.path = Path(path).resolve()
        self.commit_env = commit_env  # e.g. a fixed identity and date for exports
        if not self.path.is_dir():
            raise UserError(
                f"{path}: no such directory", "give --atom the path of an ATOM clone"
            )
        if (
            not (self.path / "atom" / "__init__.py").is_file()
            or not (self.path / "pyproject.toml").is_file()
        ):
            raise UserError(
                f"{path} is not an ATOM source tree (no atom/__init__.py and pyproject.toml)",
                "point --atom at a clone of github.com/ROCm/ATOM, or make one with "
                "`apply-patches checkout DEST`",
            )
        top = git(self.path, "rev-parse", "--show-toplevel", check=False)
        if not top or Path(top).resolve() != self.path:
            raise UserError(
                f"{path} is not the top of a git work tree",
                "use a git clone of ATOM (the tool needs git for status and commits)",
            )

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def changed_paths(self) -> list[str]:
        """Tracked files with uncommitted changes and untracked files not ignored.
        (Without the optional index refresh: asking must not rewrite the index.)"""
        out = git(
            self.path,
            "--no-optional-locks",
            "status",
            "--porcelain",
            "-z",
            "--untracked-files=all",
            strip=False,
        )
        return [entry[3:] for entry in out.split("\0") if entry]

    def read(self, rel: str) -> str | None:
        path = self.path / rel
        return path.read_text() if path.is_file() else None

    def commit(self, paths: list[str], message: str) -> str:
        git(self.path, "add", "--", *paths)
        git(self.path, "commit", "-q", "-m", message, "--", *paths, env=self.commit_env)
        return self.head()
