"""export and sweep on the real ATOM at the pin."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from atom_ckfree.cli import main
from atom_ckfree.series import project_root
from tests.tools import PIN

# report.conflict_text: series, edit, file[:line], what was expected
DRIFT_LINE = re.compile(r"series \d+, edit \S+, [^\s:]+(:\d+)?: expected ")

pytestmark = pytest.mark.integration


def git(cwd, *args) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def export_json(capsys, tree, out, *extra) -> dict:
    code = main(["export", "--atom", str(tree), "--out", str(out), "--json", *extra])
    assert code == 0
    return {e["series"]: e for e in json.loads(capsys.readouterr().out)}


def test_export_builds_the_stack_pushes_it_and_updates_it_in_place(
    make_atom_tree, tmp_path, capsys, monkeypatch
):
    tree = make_atom_tree()
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(tree, "remote", "add", "fork", str(remote))

    stack = export_json(capsys, tree, tmp_path / "out", "--push", "fork")
    assert sorted(stack) == [1, 2, 3, 4, 5, 6, 7]
    assert stack[1]["base"] == "main" and stack[3]["base"] == "ck-free/02-mha-ck-free"
    assert stack[6]["base"] == "ck-free/04-moe-cascade" and stack[6]["carries"] == [3]
    for number, entry in stack.items():
        branch = entry["branch"]
        assert git(remote, "rev-parse", branch) == entry["commit"]
        assert git(tree, "log", "-1", "--format=%s", branch).startswith(
            f"[CK-free {number}/7]"
        )
        assert entry["gh"].startswith(
            f"gh pr create --base {entry['base']} --head {branch}"
        )
        assert len(entry["patches"]) == 1
    # stacked: 3 sits on 2, which sits on the pin; independent 5 sits on the pin
    assert git(tree, "rev-parse", f"{stack[3]['commit']}^") == stack[2]["commit"]
    assert git(tree, "rev-parse", f"{stack[5]['commit']}^") == PIN
    body = (tmp_path / "out" / "03-mla-ck-free.md").read_text()
    assert "- `ck-free/02-mha-ck-free` (series 2)" in body and "## Files" in body
    assert (
        git(tree, "status", "--porcelain") == ""
        and git(tree, "rev-parse", "HEAD") == PIN
    )

    again = export_json(capsys, tree, tmp_path / "out", "--push", "fork")
    assert not any(e["moved"] for e in again.values())

    # change series 2's PR text: 2 and everything stacked on it move, the rest stays
    root = tmp_path / "project"
    shutil.copytree(project_root() / "patches", root / "patches")
    shutil.copytree(project_root() / "overlay", root / "overlay")
    manifest = root / "patches" / "02-mha-ck-free" / "series.toml"
    manifest.write_text(
        manifest.read_text().replace('title = "', 'title = "Revised: ', 1)
    )
    monkeypatch.setenv("ATOM_CKFREE_ROOT", str(root))
    changed = export_json(capsys, tree, tmp_path / "out", "--push", "fork")
    assert {n for n, e in changed.items() if e["moved"]} == {2, 3, 4, 6}
    assert git(remote, "rev-parse", "ck-free/04-moe-cascade") == changed[4]["commit"]
    assert git(tree, "rev-parse", f"{changed[4]['commit']}^") == changed[2]["commit"]


def test_export_refuses_a_dirty_tree(make_atom_tree, tmp_path, capsys):
    tree = make_atom_tree()
    (tree / "README.md").write_text("changed\n")
    assert main(["export", "--atom", str(tree), "--out", str(tmp_path / "o")]) == 2
    assert "uncommitted changes" in capsys.readouterr().err


def test_sweep_on_the_pin_verifies_every_series(atom_source, pin_template, capsys):
    code = main(["sweep", "--offline", "--ref", PIN, "--json"])
    report = json.loads(capsys.readouterr().out)
    verdicts = {
        s["name"]: (s["verdict"], s.get("details"))
        for s in report["commits"][0]["series"]
    }
    assert code == 0, verdicts
    assert all(v == "applied+verified" for v, _ in verdicts.values()), verdicts
    assert report["checks"] == ["compile", "lint", "style", "tests"]
    counts = [s["tests"] for s in report["commits"][0]["series"]]
    # the pin has no runner script: the manifest's command; no series loses a test
    assert {c["runner"] for c in counts} == {"python -m pytest -q -m 'not gpu' tests"}
    assert all(c["tests_before"] > 100 for c in counts), counts
    assert all(c["tests_after"] >= c["tests_before"] for c in counts), counts


def test_sweep_onto_newest_main_reports_precisely(atom_source, pin_template, capsys):
    """Upstream main moved ~1000 commits past the pin: the sweep finishes, every
    series gets a verdict, series 1's fixes that upstream made its own way are
    recognised, and every drift names file, line and edit."""
    code = main(["sweep", "--offline", "--checks", "compile", "--no-3way", "--json"])
    assert code in (0, 1)
    series = json.loads(capsys.readouterr().out)["commits"][0]["series"]
    assert len(series) == 7
    assert {s["verdict"] for s in series} <= {
        "applied+verified",
        "already upstream",
        "obsolete",
        "drifted",
        "verify-failed",
    }
    first = series[0]
    # both fused_moe_triton.py fixes: upstream 2b8828c left triton_kernels
    assert first["verdict"] == "obsolete"
    assert all("2b8828c" in e for e in first["obsolete_edits"]), first
    assert {
        "linear.merged-replicated-scale-shard-else",
        "scheduler.postprocess-num-rejected-default",
    } <= set(first["upstream_edits"])
    for s in series:
        if s["verdict"] == "drifted":
            assert all(DRIFT_LINE.match(d) for d in s["details"]), s
