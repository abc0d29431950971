"""The tool's cache of upstream ATOM, and clean work trees made from it.

One bare repository (``$ATOM_CKFREE_CACHE/atom.git``, default
``~/.cache/atom-ckfree/atom.git``) collects the branches and tags of every upstream it
was given — GitHub for real users, a local git directory or clone for offline work —
so that checkouts, sweeps and tests clone locally instead of from the network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import DEFAULT_UPSTREAM, PIN
from .errors import UserError
from .workspace import git

CHECKOUT_BRANCH = "ck-free-base"


def cache_repo(name: str = "atom") -> Path:
    """The cached bare repository ``name.git`` (``atom``; ``aiter`` for tests)."""
    root = Path(
        os.environ.get("ATOM_CKFREE_CACHE", Path.home() / ".cache" / "atom-ckfree")
    )
    return root / f"{name}.git"


def _location(upstream: str) -> str:
    path = Path(upstream).expanduser()
    return str(path.resolve()) if path.exists() else upstream


def update_cache(
    upstream: str = DEFAULT_UPSTREAM, branch: str = "main", name: str = "atom"
) -> Path:
    """Fetch ``upstream``'s ``branch`` and tags into the cache ``name``; a failed fetch
    is fatal only when the cache has nothing yet. (Only what is asked for: a fork's
    hundreds of topic branches are not worth the download.)"""
    repo = cache_repo(name)
    if not (repo / "HEAD").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "--bare")
    print(f"fetching {upstream} into {repo} …", file=sys.stderr)
    try:
        git(
            repo,
            "fetch",
            "-q",
            "--prune",
            _location(upstream),
            f"+refs/heads/{branch}:refs/heads/{branch}",
            "+refs/tags/*:refs/tags/*",
        )
    except subprocess.CalledProcessError as error:
        if not git(repo, "for-each-ref", "--count=1", check=False):
            reason = (error.stderr or "").strip().splitlines() or [str(error)]
            raise UserError(
                f"cannot fetch {upstream}: {reason[-1]}",
                "check the URL or path (--upstream), or the network",
            ) from error
        print(
            f"warning: fetch failed; using the cached copy in {repo}", file=sys.stderr
        )
    return repo


def resolve(ref: str, repo: Path | None = None) -> str | None:
    repo = repo or cache_repo()
    if not (repo / "HEAD").exists():
        return None
    sha = git(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    return sha or None


def checkout(dest: Path, upstream: str | None = None, ref: str = PIN) -> str:
    """A clean ATOM work tree at ``ref`` in ``dest`` (new or empty), on branch ``ck-free-base``."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(
            f"{dest} exists and is not empty", "choose a new directory for the checkout"
        )
    pinned = re.fullmatch(r"[0-9a-f]{40}", ref) is not None
    if upstream is not None or not pinned or resolve(ref) is None:
        update_cache(upstream or DEFAULT_UPSTREAM, "main" if pinned else ref)
    sha = resolve(ref)
    if sha is None:
        raise UserError(
            f"{ref} is not a commit, branch or tag of the cached upstream",
            "check --ref, or fetch the upstream that has it with --upstream",
        )
    created = not dest.exists()
    try:
        git(Path.cwd(), "clone", "-q", "--no-checkout", str(cache_repo()), str(dest))
        git(dest, "checkout", "-q", "-B", CHECKOUT_BRANCH, sha)
        git(dest, "remote", "set-url", "origin", upstream or DEFAULT_UPSTREAM)
    except subprocess.CalledProcessError as error:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise UserError(
            f"git clone into {dest} failed: {error.stderr.strip()}", "see git's message"
        ) from error
    return sha
