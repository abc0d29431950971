"""Finding AITER's source: ATOM_CKFREE_AITER or the tool's cache, the commit that
matches the ATOM pin, extracted once."""

from __future__ import annotations

import subprocess
import sys

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
def atom_git():
    """ATOM's history from the machine's cache (the integration tests' source)."""
    repo = upstream.cache_repo("atom")
    if not (repo / "HEAD").exists():
        pytest.skip(f"NO ATOM SOURCE: {repo} is not seeded")
    return repo


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


@pytest.mark.integration
def test_checkout_seeds_the_aiter_cache(aiter_clone, tmp_path, monkeypatch, atom_git):
    """``apply-patches checkout --aiter-upstream`` fetches AITER's main into the
    cache that the aiter tests read (ATOM itself from the machine's cache)."""
    from atom_ckfree.cli import main

    monkeypatch.setenv("ATOM_CKFREE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(aiter_source.ENV, raising=False)
    clone, before = aiter_clone
    dest = tmp_path / "atom"
    assert main(["checkout", str(dest), "--upstream", str(atom_git),
                 "--aiter-upstream", str(clone)]) == 0  # fmt: skip
    package, where = aiter_source.pinned_package()
    assert package is not None and before[:12] in where
    assert (package / "version.py").read_text() == "NAME = 'before the pin'\n"


def test_an_installed_wheel_is_the_fallback(cache, tmp_path, monkeypatch):
    """Without a git source, an ``aiter`` package on the path (as the amd-aiter
    wheel installs it) is used, found without being imported, and named as a
    fallback."""
    site = tmp_path / "site"
    (site / "aiter" / "ops" / "triton").mkdir(parents=True)
    (site / "aiter" / "__init__.py").write_text("raise ImportError('needs ROCm')\n")
    assert aiter_source.pinned_package()[0] is None
    monkeypatch.syspath_prepend(str(site))
    package, where = aiter_source.pinned_package()
    assert package == site / "aiter"
    assert "amd-aiter" in where and "fallback" in where


def test_the_fallback_looks_past_an_imported_fake(cache, tmp_path, monkeypatch):
    """A fake ``aiter`` already in ``sys.modules`` (the aiter tests leave one) does
    not hide the installed wheel, and is not mistaken for it."""
    import types

    site = tmp_path / "site"
    (site / "aiter" / "ops" / "triton").mkdir(parents=True)
    (site / "aiter" / "__init__.py").write_text("raise ImportError('needs ROCm')\n")
    monkeypatch.setitem(sys.modules, "aiter", types.ModuleType("aiter"))
    assert aiter_source.pinned_package()[0] is None
    monkeypatch.syspath_prepend(str(site))
    assert aiter_source.pinned_package()[0] == site / "aiter"
