"""Finding AITER's source: ATOM_CKFREE_AITER or the tool's cache, the commit that
matches the ATOM pin, extracted once."""

from __future__ import annotations

import subprocess

import pytest

from atom_ckfree import aiter_source, upstream
from atom_ckfree.errors import UserError
from atom_ckfree.workspace import identity


def commit(repo, when: str, name: str) -> str:
    (repo / "aiter").mkdir(exist_ok=True)
    (repo / "aiter" / "version.py").write_text(f"NAME = {name!r}\n")
    env = identity("t", "t@t", when)
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", name], check=True, env=env)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def aiter_clone(tmp_path):
    repo = tmp_path / "aiter-clone"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    before = commit(repo, "2026-02-23T12:00:00+00:00", "before the pin")
    commit(repo, "2026-02-25T12:00:00+00:00", "after the pin")
    return repo, before


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_CKFREE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(aiter_source.ENV, raising=False)
    return tmp_path / "cache"


def test_no_source_says_where_to_put_one(cache):
    repo, why = aiter_source.aiter_git()
    assert repo is None
    assert aiter_source.ENV in why and str(cache / "aiter.git") in why


def test_env_var_seeds_the_cache_and_the_pinned_commit_is_extracted(
    cache, aiter_clone, monkeypatch, tmp_path
):
    clone, before = aiter_clone
    monkeypatch.setenv(aiter_source.ENV, str(clone))
    repo, where = aiter_source.aiter_git()
    assert repo == upstream.cache_repo("aiter") == cache / "aiter.git"
    assert str(clone) in where
    assert aiter_source.pinned_commit(repo) == before
    package = aiter_source.extract(repo, before, tmp_path / "out")
    assert (package / "version.py").read_text() == "NAME = 'before the pin'\n"
    # Later runs find the cache alone, and the extraction already there.
    monkeypatch.delenv(aiter_source.ENV)
    assert aiter_source.aiter_git()[0] == repo
    (package / "version.py").write_text("kept\n")
    assert aiter_source.extract(repo, before, tmp_path / "out") == package
    assert (package / "version.py").read_text() == "kept\n"


def test_unfetchable_env_var_is_one_clear_error(cache, monkeypatch, tmp_path):
    monkeypatch.setenv(aiter_source.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="cannot fetch"):
        aiter_source.aiter_git()
