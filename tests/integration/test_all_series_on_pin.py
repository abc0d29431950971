"""Every series on the real ATOM at the pin: applies, re-applies as a no-op, and
ATOM's CPU suite with all the new tests passes (no GPU, no aiter)."""

from __future__ import annotations

import json

import pytest

from atom_ckfree.cli import main

pytestmark = pytest.mark.integration


def test_all_series_apply_and_atoms_suite_passes(make_atom_tree, atom_pytest, capsys):
    tree = make_atom_tree()
    assert (
        main(["apply", "--atom", str(tree), "--series", "all", "--commit", "--json"])
        == 0
    )
    outcomes = [s["outcome"] for s in json.loads(capsys.readouterr().out)["series"]]
    assert outcomes == ["applied"] * 7

    assert main(["apply", "--atom", str(tree), "--series", "all", "--json"]) == 0
    outcomes = [s["outcome"] for s in json.loads(capsys.readouterr().out)["series"]]
    assert outcomes == ["already applied"] * 7

    result = atom_pytest(tree, "tests", "-m", "not gpu")
    assert result.returncode == 0, result.stdout[-5000:]
    assert " failed" not in result.stdout.splitlines()[-1]
