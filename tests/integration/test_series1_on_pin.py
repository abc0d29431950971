"""Series 1 on the real ATOM at the pin: the promises of the README, end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from atom_ckfree.cli import main

pytestmark = pytest.mark.integration


def summary(result: subprocess.CompletedProcess) -> dict[str, int]:
    line = result.stdout.strip().splitlines()[-1]
    return {
        word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error)", line)
    }


def cli_json(capsys, *args) -> tuple[int, dict]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def tree_bytes(tree):
    out = subprocess.run(
        ["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True
    )
    files = subprocess.run(
        ["git", "ls-files"], cwd=tree, capture_output=True, text=True
    ).stdout.split()
    return out.stdout, {f: (tree / f).read_bytes() for f in files}


def test_series_1_makes_atoms_own_suite_green(make_atom_tree, atom_pytest, capsys):
    tree = make_atom_tree()
    assert summary(atom_pytest(tree, "tests")) == {"passed": 108, "failed": 7}

    code, report = cli_json(capsys, "apply", "--atom", str(tree), "--series", "1")
    assert code == 0 and report["at_pin"]
    assert report["series"][0]["outcome"] == "applied"
    assert len(report["series"][0]["files"]) == 4

    result = atom_pytest(tree, "tests")
    assert result.returncode == 0, result.stdout[-3000:]
    assert summary(result) == {"passed": 115}

    before = tree_bytes(tree)
    code, report = cli_json(capsys, "apply", "--atom", str(tree), "--series", "1")
    assert code == 0 and report["series"][0]["outcome"] == "already applied"
    assert tree_bytes(tree) == before

    code, report = cli_json(capsys, "status", "--atom", str(tree))
    assert report["series"][0]["state"] == "applied"


def test_dry_run_writes_nothing_and_commit_is_one_per_series(make_atom_tree, capsys):
    tree = make_atom_tree()
    before = tree_bytes(tree)
    code, report = cli_json(
        capsys, "apply", "--atom", str(tree), "--series", "1", "--dry-run"
    )
    assert code == 0 and "+            num_rejected = 0" in report["diff"]
    assert tree_bytes(tree) == before

    code, report = cli_json(
        capsys, "apply", "--atom", str(tree), "--series", "1", "--commit"
    )
    log = subprocess.run(
        ["git", "log", "-1", "--format=%s"], cwd=tree, capture_output=True, text=True
    )
    assert (
        log.stdout.strip()
        == "[CK-free 1/7] Fix four bugs found while validating the CK-free mode"
    )
    assert report["series"][0]["commit"]


def test_broken_anchor_is_a_conflict_that_changes_nothing(make_atom_tree, capsys):
    tree = make_atom_tree()
    linear = tree / "atom/model_ops/linear.py"
    linear.write_text(
        linear.read_text().replace(
            "def weight_loader(\n        self,\n        param: nn.Parameter,\n        loaded_weight: torch.Tensor,\n        loaded_shard_id: Optional[int] = None,\n    ):  # ？",
            "def weight_loader_v2(\n        self,\n        param: nn.Parameter,\n        loaded_weight: torch.Tensor,\n        loaded_shard_id: Optional[int] = None,\n    ):  # ？",
        )
    )
    subprocess.run(["git", "commit", "-qam", "rename"], cwd=tree, check=True)
    before = tree_bytes(tree)
    code, report = cli_json(capsys, "apply", "--atom", str(tree), "--series", "1")
    assert code == 1
    conflict = report["series"][0]["conflicts"][0]
    assert conflict["file"] == "atom/model_ops/linear.py"
    assert conflict["edit"] == "linear.merged-replicated-scale-shard-else"
    assert conflict["line"] == 664  # class MergedReplicatedLinear
    assert "weight_loader_v2" in conflict["found"]
    assert tree_bytes(tree) == before


def test_console_script_runs(make_atom_tree):
    tree = make_atom_tree()
    result = subprocess.run(
        [sys.executable, "-m", "atom_ckfree", "status", "--atom", str(tree)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "bug-fixes" in result.stdout and "not applied" in result.stdout
