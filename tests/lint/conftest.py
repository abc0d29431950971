"""One ATOM tree at the pin with every series applied, shared by the lint tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from atom_ckfree import engine
from atom_ckfree.series import load_all, select
from atom_ckfree.workspace import AtomTree


@pytest.fixture(scope="session")
def patched_tree(pin_template, tmp_path_factory) -> Path:
    """A copy of the pin checkout with all series applied (not committed)."""
    dest = tmp_path_factory.mktemp("atom-patched") / "atom"
    shutil.copytree(pin_template, dest, symlinks=True)
    all_series = load_all()
    results = engine.apply(AtomTree(dest), select("all", all_series), all_series)
    bad = [
        (r.series.name, r.outcome)
        for r in results
        if r.outcome not in ("applied", "already applied")
    ]
    assert not bad, bad
    return dest


@pytest.fixture(scope="session")
def files_5_to_7() -> list[str]:
    """Every ATOM path that series 5, 6 and 7 write (edited or added)."""
    series = {s.number: s for s in load_all()}
    return sorted({path for n in (5, 6, 7) for path in series[n].files})
