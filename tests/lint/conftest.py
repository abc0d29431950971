"""One ATOM tree at the pin with every series applied, shared by the lint tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from atom_ckfree.series import load_all


@pytest.fixture(scope="session")
def patched_tree(patched_tree_for) -> Path:
    """The pin with every series applied (not committed)."""
    return patched_tree_for("all")


@pytest.fixture(scope="session")
def files_5_to_7() -> list[str]:
    """Every ATOM path that series 5, 6 and 7 write (edited or added)."""
    series = {s.number: s for s in load_all()}
    return sorted({path for n in (5, 6, 7) for path in series[n].files})
