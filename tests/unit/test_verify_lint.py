"""The lint check on a tree without a ruff configuration uses the manifest's rules,
not whatever the installed ruff defaults to."""

from __future__ import annotations

from atom_ckfree import verify


def test_a_newer_ruffs_default_rules_are_not_applied(project, atom):
    module = atom / "atom" / "imports.py"
    module.write_text("import sys\nimport os\n\nprint(sys)\n")
    found = {code for (_, code, _) in verify.lint_findings(atom, ["atom/imports.py"])}
    assert found == {"F401"}  # os unused; the unsorted block (I001) is not ATOM's rule


def test_the_trees_own_configuration_wins(project, atom):
    (atom / "ruff.toml").write_text('[lint]\nselect = ["I"]\n')
    (atom / "atom" / "imports.py").write_text("import sys\nimport os\n\nprint(sys)\n")
    found = {code for (_, code, _) in verify.lint_findings(atom, ["atom/imports.py"])}
    assert found == {"I001"}
