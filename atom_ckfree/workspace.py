"""A work tree of the upstream project: recognising one (by the manifest's package name
and marker paths), and the few git operations the tool needs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import tomlkit
import tomlkit.exceptions

from . import project
from .errors import UserError


def git(
    cwd: Path | str,
    *args: str,
    check: bool = True,
    strip: bool = True,
    env: dict | None = None,
    input: str | None = None,
) -> str:
    """``git ARGS`` in ``cwd``: its output (stripped unless told), or
    ``CalledProcessError`` carrying git's own text when ``check`` and it fails."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        input=input,
        env={**os.environ, **env} if env else None,
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, ["git", *args], result.stdout, result.stderr
        )
    return result.stdout.strip() if strip else result.stdout


def _project_name(pyproject: Path) -> str | None:
    """``[project] name`` of a pyproject.toml; None when it has none or is unreadable."""
    try:
        project = tomlkit.parse(pyproject.read_text()).get("project", {})
    except (OSError, UnicodeDecodeError, tomlkit.exceptions.TOMLKitError):
        return None
    name = project.get("name") if isinstance(project, dict) else None
    return str(name) if name is not None else None


def identity(name: str, email: str, date: str | None = None) -> dict[str, str]:
    """The environment that makes git author and commit as ``name <email>`` (at
    ``date``, when given), whatever the machine's configuration."""
    env = {}
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = name, email
        if date is not None:
            env[f"GIT_{role}_DATE"] = date
    return env


def git_dir(tree: Path) -> Path:
    """The git dir of ``tree``: its ``.git``, or ``.git/worktrees/NAME`` of a worktree."""
    return Path(git(tree, "rev-parse", "--absolute-git-dir"))


class WorkTree:
    """A git work tree whose top holds the upstream project, recognised by content:
    the ``[project] name`` of its pyproject.toml and the manifest's marker paths."""

    def __init__(self, path: Path | str, commit_env: dict | None = None):
        self.path = Path(path).resolve()
        self.commit_env = commit_env  # e.g. a fixed identity and date for exports
        upstream = project.current()
        what = f"{upstream.name} source tree"
        fix = (
            f"point --atom at a clone of {upstream.url}, or make one with "
            "`apply-patches checkout DEST`"
        )
        if not self.path.exists():
            raise UserError(f"{path}: no such directory", fix)
        if not self.path.is_dir():
            raise UserError(f"{path}: not a directory", fix)
        markers = ("pyproject.toml", *upstream.markers)
        missing = [m for m in markers if not (self.path / m).exists()]
        if missing:
            raise UserError(f"{path} is not an {what} (no {', '.join(missing)})", fix)
        name = _project_name(self.path / "pyproject.toml")
        if name != upstream.package:
            found = (
                f"names project {name!r}, not {upstream.package!r}"
                if name
                else "has no [project] name"
            )
            raise UserError(f"{path} is not an {what}: its pyproject.toml {found}", fix)
        top = git(self.path, "rev-parse", "--show-toplevel", check=False)
        if not top or Path(top).resolve() != self.path:
            raise UserError(
                f"{path} is not the top of a git work tree",
                f"use a git clone of {upstream.name} (the tool needs git for status "
                "and commits)",
            )
        if not git(self.path, "rev-parse", "--verify", "-q", "HEAD", check=False):
            raise UserError(
                f"{path} has no commit yet",
                f"check out a {upstream.name} commit first (git checkout, or "
                "`apply-patches checkout DEST`)",
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
