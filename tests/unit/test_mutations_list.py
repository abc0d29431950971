"""tests/mutations.toml stays true to the tree: every mutation still applies (its text
occurs exactly once in its file) and names tests that exist, so a refactor cannot
quietly turn the mutation check into a list of no-ops."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

ROOT = Path(__file__).resolve().parents[2]
MUTATIONS = tomlkit.parse((ROOT / "tests" / "mutations.toml").read_text()).unwrap()[
    "mutation"
]


def test_ids_are_unique():
    ids = [m["id"] for m in MUTATIONS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m["id"] for m in MUTATIONS])
def test_mutation_applies_once_and_names_real_tests(mutation):
    text = (ROOT / mutation["file"]).read_text()
    assert text.count(mutation["old"]) == 1
    assert mutation["new"] != mutation["old"]
    for test in mutation["tests"]:
        assert (ROOT / test.split("::")[0]).is_file(), test
