"""Where tests and benchmarks find AITER's source, at the commit that matches the pin.

The source is AITER's git history: ``$ATOM_CKFREE_AITER`` (a git directory, a clone
or a URL; fetched into the tool's cache first) or the cache itself
(``~/.cache/atom-ckfree/aiter.git``, see :func:`atom_ckfree.upstream.cache_repo`).
The commit is the last one of AITER's ``main`` (first parents) not newer than the
ATOM pin, extracted once per commit into an ignored folder of this repository;
AITER's Python is imported from there through stub packages, never copied. Without
a git source, an installed ``amd-aiter`` wheel's ``aiter`` package is the fallback
(found, not imported: its ``__init__`` needs ROCm), whatever its version.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
import tarfile
from pathlib import Path

from . import project, upstream
from .errors import CkfreeError
from .workspace import git

ENV = "ATOM_CKFREE_AITER"
EXTRACT_ROOT = Path(__file__).resolve().parents[1] / ".aiter"


def aiter_git() -> tuple[Path | None, str]:
    """(the git directory of AITER's history, where it came from), or
    (None, why there is none)."""
    given = os.environ.get(ENV)
    if given:
        return upstream.update_cache(given, "main", name="aiter"), f"{ENV}={given}"
    repo = upstream.cache_repo("aiter")
    if (repo / "HEAD").exists():
        return repo, _home_relative(repo)
    return None, (
        f"no AITER source: set {ENV} to AITER's git (a clone, bare directory or "
        f"URL such as {project.current().companions['aiter']}) or seed {repo} with it"
    )


def pinned_commit(repo: Path) -> str | None:
    """The last first-parent commit of ``main`` not newer than the ATOM pin."""
    out = git(
        repo,
        "log",
        "--first-parent",
        "main",
        f"--before={project.current().pin_date}",
        "-1",
        "--format=%H",
        check=False,
    )
    return out or None


def extract(repo: Path, commit: str, root: Path = EXTRACT_ROOT) -> Path:
    """AITER's ``aiter`` package at ``commit``, extracted under ``root/commit``
    (once); returns the package directory."""
    dest = root / commit
    package = dest / "aiter"
    if (dest / ".complete").exists():
        return package
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "aiter.tar"
    git(repo, "archive", "--format=tar", "-o", str(archive), commit, "aiter")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    (dest / ".complete").touch()
    return package


def _home_relative(path: Path) -> str:
    """``~/…`` for a path under the home directory (reports name no machine's paths)."""
    try:
        return f"~/{path.relative_to(Path.home())}"
    except ValueError:
        return str(path)


def pinned_package() -> tuple[Path | None, str]:
    """(AITER's ``aiter`` package directory, where it comes from), or (None, why
    there is none): the git source at the pinned commit, else an installed
    ``amd-aiter`` wheel."""
    try:
        repo, where = aiter_git()
    except CkfreeError as error:  # ATOM_CKFREE_AITER names nothing fetchable
        repo, where = None, f"no AITER source: {error.message}"
    if repo is not None:
        commit = pinned_commit(repo)
        if commit is not None:
            return extract(repo, commit), f"AITER {commit[:12]} from {where}"
        where = f"{where} has no main commit before {project.current().pin_date}"
    wheel = _installed_wheel()
    if wheel is not None:
        return wheel
    return None, where


def _installed_wheel() -> tuple[Path, str] | None:
    # The path finder, not importlib.util.find_spec: that answers from sys.modules,
    # where a test's fake aiter may already sit.
    spec = importlib.machinery.PathFinder.find_spec("aiter")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    if not (package / "ops" / "triton").is_dir():
        return None
    try:
        version = importlib.metadata.version("amd-aiter")
    except importlib.metadata.PackageNotFoundError:
        version = "of unknown version"
    return package, (
        f"the installed amd-aiter {version} at {package} (a fallback: not the AITER "
        f"commit of {project.current().pin_date})"
    )
