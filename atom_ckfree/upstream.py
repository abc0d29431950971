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

from . import project
from .errors import FaultError, UserError
from .workspace import git


def cache_repo(name: str = "atom") -> Path:
    """The cached bare repository ``name.git`` (``atom``; ``aiter`` for tests)."""
    root = Path(
        os.environ.get("ATOM_CKFREE_CACHE", Path.home() / ".cache" / "atom-ckfree")
    )
    repo = root / f"{name}.git"
    for path in (root, repo):
        if path.exists() and not path.is_dir():
            raise UserError(
                f"the upstream cache {path} is not a directory",
                "remove that file, or point ATOM_CKFREE_CACHE at a directory",
            )
    return repo


def _git(repo: Path, *args: str, check: bool = True) -> str:
    """git on the cache itself (never on a repository around it, if it is broken)."""
    return git(repo, f"--git-dir={repo}", *args, check=check)


def check_intact(repo: Path) -> None:
    """Raise when the cache is corrupt, so that a broken cache is never reported as a
    failed fetch or a missing commit."""
    try:
        _git(repo, "fsck", "--connectivity-only", "--no-dangling")
    except subprocess.CalledProcessError as error:
        raise FaultError(
            f"the upstream cache {repo} is corrupt",
            f"delete it (rm -rf {repo}) and rebuild it with "
            "`apply-patches checkout --upstream URL_OR_PATH DEST`",
            "\n".join(
                line
                for line in error.stderr.splitlines()
                if not line.startswith("notice:")
            ),
        ) from error


def _location(upstream: str) -> str:
    path = Path(upstream).expanduser()
    return str(path.resolve()) if path.exists() else upstream


def update_cache(
    upstream: str,
    branch: str = "main",
    required: bool = False,
    name: str = "atom",
) -> Path:
    """Fetch ``upstream``'s ``branch`` and tags into the cache ``name``. A failed fetch is fatal
    when ``required`` (the user named this upstream) or when the cache has nothing yet;
    otherwise the cache is used as it is. (Only what is asked for: a fork's hundreds of
    topic branches are not worth the download.)"""
    repo = cache_repo(name)
    created = not (repo / "HEAD").exists()
    if created:
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "--bare")
    else:
        check_intact(repo)
    if sys.stderr.isatty():  # progress for a person, as git shows its own
        print(f"fetching {upstream} into {repo} …", file=sys.stderr)
    try:
        _git(
            repo,
            "fetch",
            "-q",
            "--prune",
            _location(upstream),
            f"+refs/heads/{branch}:refs/heads/{branch}",
            "+refs/tags/*:refs/tags/*",
        )
    except subprocess.CalledProcessError as error:
        if required or created:
            if created:
                shutil.rmtree(repo, ignore_errors=True)
            raise UserError(
                f"cannot fetch branch {branch} of {upstream}",
                "check the URL or path "
                f"({'--upstream' if name == 'atom' else f'--{name}-upstream'}), "
                "or the network",
                error.stderr,
            ) from error
        print(
            f"warning: fetch of {upstream} failed; using the cached copy in {repo}",
            file=sys.stderr,
        )
    return repo


def resolve(ref: str, repo: Path | None = None) -> str | None:
    repo = repo or cache_repo()
    if not (repo / "HEAD").exists():
        return None
    sha = _git(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    if not sha:
        check_intact(repo)  # a missing commit, or a broken cache?
    return sha or None


def checkout(dest: Path, upstream: str | None = None, ref: str | None = None) -> str:
    """A clean work tree of the upstream at ``ref`` (default: the pin) in ``dest``
    (new or empty), on the manifest's checkout branch; on any failure ``dest`` is left
    as it was."""
    manifest = project.current()
    ref = ref or manifest.pin
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(
            f"{dest} exists and is not a directory",
            "choose a new directory for the checkout",
        )
    if dest.exists() and any(dest.iterdir()):
        raise UserError(
            f"{dest} exists and is not empty", "choose a new directory for the checkout"
        )
    pinned = re.fullmatch(r"[0-9a-f]{40}", ref) is not None
    if upstream is not None or not pinned or resolve(ref) is None:
        # main and the tags first: a tag, or a commit of main's history, resolves then
        update_cache(upstream or manifest.url, required=upstream is not None)
        if not pinned and resolve(ref) is None:  # then it must be another branch
            update_cache(upstream or manifest.url, ref, required=True)
    sha = resolve(ref)
    if sha is None:
        raise UserError(
            f"{ref} is not a commit, branch or tag of the cached upstream",
            "check --ref, or fetch the upstream that has it with --upstream",
        )
    created = not dest.exists()
    try:
        git(Path.cwd(), "clone", "-q", "--no-checkout", str(cache_repo()), str(dest))
        git(dest, "checkout", "-q", "-B", manifest.checkout_branch, sha)
        git(dest, "remote", "set-url", "origin", _location(upstream or manifest.url))
    except BaseException as error:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:  # it was an empty directory: empty it again
            for child in dest.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        if isinstance(error, subprocess.CalledProcessError):
            raise FaultError(
                f"git clone into {dest} failed and was undone",
                "check the disk and permissions there, then run checkout again",
                error.stderr,
            ) from error
        raise
    return sha
