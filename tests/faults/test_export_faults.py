"""export under bad input and faults: any --out works, a tree that carries the series as
commits stacks from below them, and no failure leaves a branch behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.tools import PIN

from .conftest import run_cli, tree_state

pytestmark = pytest.mark.integration


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def tree_for(make_atom_tree):
    """``make_atom_tree`` with its index's stat data fresh, as in a user's clone (a
    copied tree's is stale, and the first ``git status`` would rewrite it)."""

    def make(series: str | None = None) -> Path:
        tree = make_atom_tree(series=series)
        git(tree, "status", "--porcelain")
        return tree

    return make


def error_line(run) -> str:
    """export prints a line per branch as it goes; the error is the one error line."""
    assert "Traceback" not in run.err, run.err
    errors = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.err
    return errors[0]


def test_the_default_relative_out_is_the_callers_folder(tree_for, tmp_path):
    tree = tree_for()
    cwd = tmp_path / "here"
    cwd.mkdir()
    before = tree_state(tree)
    run = run_cli("export", "--atom", str(tree), "--series", "1", cwd=cwd)
    assert run.code == 0, run.err
    assert (cwd / "ck-free-export" / "01-bug-fixes.md").is_file()
    assert len(list((cwd / "ck-free-export" / "01-bug-fixes").glob("*.patch"))) == 1
    after = tree_state(tree)
    assert {**after, "refs": None} == {**before, "refs": None}
    assert git(tree, "rev-parse", "ck-free/01-bug-fixes^") == PIN


def test_a_tree_with_the_series_committed_stacks_from_below_them(tree_for, tmp_path):
    tree = tree_for("1")
    out = tmp_path / "out"
    run = run_cli("export", "--atom", str(tree), "--series", "1", "--out", str(out))
    assert run.code == 0, run.err
    assert "starts below them" in run.err
    branch = "ck-free/01-bug-fixes"
    assert git(tree, "rev-parse", f"{branch}^") == PIN
    assert git(tree, "diff", "--name-only", PIN, branch) == git(
        tree, "diff", "--name-only", PIN, "HEAD"
    )
    patch = next((out / "01-bug-fixes").glob("*.patch")).read_text()
    assert "atom/model_engine/scheduler.py" in patch


def test_a_series_already_in_the_base_is_refused_with_how_to_pick_one(
    tree_for,
):
    tree = tree_for("1")
    git(tree, "commit", "-q", "--allow-empty", "-m", "my own work on top")
    before = tree_state(tree)
    run = run_cli("export", "--atom", str(tree), "--series", "1", "--out", "o")
    assert run.code == 2, run.err
    line = error_line(run)
    assert "series 1 is already in" in line and "--base" in line
    assert tree_state(tree) == before


def test_a_rejected_push_leaves_no_branch_and_restores_a_moved_one(tree_for, tmp_path):
    tree = tree_for()
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho refused by the remote >&2\nexit 1\n")
    hook.chmod(0o755)
    git(tree, "remote", "add", "fork", str(remote))
    git(tree, "branch", "ck-free/05-docker-wheels", "HEAD")  # a branch export moves
    before = tree_state(tree)
    run = run_cli(
        "export",
        "--atom",
        str(tree),
        "--series",
        "1,5",
        "--out",
        str(tmp_path / "o"),
        "--push",
        "fork",
    )
    assert run.code == 2, run.err
    assert "push to fork failed" in error_line(run)
    assert "    error: failed to push some refs" in run.err
    assert tree_state(tree) == before
    assert git(remote, "for-each-ref") == ""


def test_a_series_that_fails_mid_stack_leaves_no_branch(tree_for, tmp_path):
    tree = tree_for()
    # series 7 adds this file; a different one in the tree makes it conflict
    (tree / "scripts" / "test_golden_output.sh").write_text("mine\n")
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", "a file series 7 wants to add")
    before = tree_state(tree)
    run = run_cli(
        "export", "--atom", str(tree), "--series", "1,7", "--out", str(tmp_path / "o")
    )
    assert run.code == 2, run.err
    assert "series 7 does not apply" in error_line(run)
    assert tree_state(tree) == before
