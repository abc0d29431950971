"""Shared fixtures: real ATOM trees at the pin, made from the tool's upstream cache.

Integration tests need an ATOM source. They find it through ``ATOM_CKFREE_UPSTREAM``
(a URL or a local git directory of ATOM) or, failing that, in the tool's cache
(``apply-patches checkout --upstream ...`` seeds it). Without either they skip, and
say so loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atom_ckfree import engine, upstream
from atom_ckfree.series import load_all, select
from atom_ckfree.workspace import WorkTree, identity
from tests.tools import MAIN, PIN

ROOT = Path(__file__).resolve().parents[1]

GIT_IDENTITY = identity("atom-ckfree tests", "tests@atom-ckfree.invalid")

NO_SOURCE = (
    "NO ATOM SOURCE: integration tests skipped. Seed the cache with "
    "`apply-patches checkout --upstream <ATOM URL or git dir> /tmp/atom` "
    "or set ATOM_CKFREE_UPSTREAM to an ATOM git directory or URL."
)


@pytest.fixture(autouse=True, scope="session")
def _git_identity():
    """Commits made by tests never depend on the machine's git configuration."""
    saved = {k: os.environ.get(k) for k in GIT_IDENTITY}
    os.environ.update(GIT_IDENTITY)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def atom_source() -> str | None:
    """The upstream to check out from, or None when the cache already has the pin."""
    source = os.environ.get("ATOM_CKFREE_UPSTREAM")
    if source:
        return source
    if upstream.resolve(PIN) is None:
        print(f"\n{'!' * 78}\n{NO_SOURCE}\n{'!' * 78}", file=sys.stderr)
        pytest.skip(NO_SOURCE)
    return None


@pytest.fixture(scope="session")
def pin_template(tmp_path_factory, atom_source) -> Path:
    """One clean checkout at the pin per session; tests copy it (cheap) instead."""
    dest = tmp_path_factory.mktemp("atom-pin") / "atom"
    upstream.checkout(dest, atom_source, PIN)
    return dest


@pytest.fixture(scope="session")
def main_template(tmp_path_factory, atom_source) -> Path:
    """One clean checkout at upstream main (the manifest's second base) per session."""
    if upstream.resolve(MAIN) is None and atom_source is None:
        pytest.skip(f"the upstream cache has no ATOM main {MAIN[:12]}: {NO_SOURCE}")
    dest = tmp_path_factory.mktemp("atom-main") / "atom"
    upstream.checkout(dest, atom_source, MAIN)
    return dest


def _apply(tree: Path, series: str, commit: bool) -> None:
    all_series = load_all()
    results = engine.apply(
        WorkTree(tree), select(series, all_series), all_series, commit=commit
    )
    bad = [r for r in results if r.outcome not in ("applied", "already applied")]
    assert not bad, [(r.series.name, r.outcome) for r in bad]


@pytest.fixture(scope="session")
def patched_tree_for(pin_template, tmp_path_factory):
    """``patched_tree_for("1-3")`` → a copy of the pin with those series applied (not
    committed), made once per session and selection; tests must not change it."""
    made: dict[str, Path] = {}

    def get(series: str) -> Path:
        if series not in made:
            dest = tmp_path_factory.mktemp("atom-patched") / "atom"
            shutil.copytree(pin_template, dest, symlinks=True)
            _apply(dest, series, commit=False)
            made[series] = dest
        return made[series]

    return get


@pytest.fixture
def make_atom_tree(pin_template, tmp_path):
    """``make_atom_tree(series="1-3")`` → a fresh clean ATOM work tree at the pin,
    with those series applied and committed (none by default)."""

    def make(series: str | None = None, name: str = "atom") -> Path:
        dest = tmp_path / name
        shutil.copytree(pin_template, dest, symlinks=True)
        if series:
            _apply(dest, series, commit=True)
        return dest

    return make


@pytest.fixture
def atom_pytest():
    """``atom_pytest(tree, *args)`` runs ATOM's own pytest suite in ``tree``,
    CPU-only, with this interpreter."""

    def run(tree: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=tree,
            capture_output=True,
            text=True,
        )

    return run
