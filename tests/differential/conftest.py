"""Pin and patched ATOM attention modules, side by side under one fake ``aiter``.

``attention_modules`` loads ``attention_mha`` and ``attention_mla`` twice, as the
pin has them and with series 1-3 applied, under distinct module names, with
``atom`` pointing at the patched tree (its other modules equal the pin's, and
its ``envs`` is a superset). Without an ATOM source it skips loudly through
``pin_template`` (tests/conftest.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.tools import load_file

FAKE_DIR = Path(__file__).resolve().parents[2] / "overlay" / "tests"
if str(FAKE_DIR) not in sys.path:
    sys.path.insert(0, str(FAKE_DIR))


@pytest.fixture(scope="session")
def patched_tree(patched_tree_for) -> Path:
    """The pin with series 1-3 applied, once a session."""
    return patched_tree_for("1-3")


@pytest.fixture(scope="session")
def attention_modules(pin_template, patched_tree):
    """``attention_modules(ck)`` -> {"fake": FakeAiter, "patched": {"mha", "mla"},
    "pin": {...} (only with CK: the pin cannot import without it)}, loaded once
    per ``ck`` under a fake of their own, which the call makes current."""
    import fake_aiter
    from fake_aiter import atom_stubs

    cache: dict[bool, dict] = {}

    def get(ck: bool) -> dict:
        if ck not in cache:
            fake = fake_aiter.FakeAiter(ck=ck).install()
            if not cache:
                atom_stubs.prepare(patched_tree)
            entry = {"fake": fake}
            for label, tree in (("pin", pin_template), ("patched", patched_tree)):
                if label == "pin" and not ck:
                    continue
                ops = tree / "atom" / "model_ops"
                tag = f"{label}_{'ck' if ck else 'nock'}"
                entry[label] = {
                    "mla": load_file(
                        ops / "attention_mla.py", f"atom.model_ops.{tag}_attention_mla"
                    ),
                    "mha": load_file(
                        ops / "attention_mha.py", f"atom.model_ops.{tag}_attention_mha"
                    ),
                }
            cache[ck] = entry
        entry = cache[ck]
        entry["fake"].install()
        entry["fake"].clear()
        from atom.utils import envs

        envs.aiter_has_ck.cache_clear()
        return entry

    yield get
    for entry in cache.values():
        entry["fake"].uninstall()
