"""The sweep on a miniature upstream history: verdicts, the culprit commit, the
--3way comparison and the baseline comparison."""

from __future__ import annotations

import json

import pytest

from atom_ckfree import sweep
from atom_ckfree.cli import main
from atom_ckfree.series import load_all

from .conftest import MODULE, git


def commit_file(tree, text: str, message: str) -> str:
    (tree / "atom" / "engine.py").write_text(text)
    git(tree, "commit", "-qam", message)
    return git(tree, "rev-parse", "HEAD").strip()


@pytest.fixture
def history(atom):
    """pin → unrelated change → upstream adds the else itself → renames step."""
    pin = git(atom, "rev-parse", "HEAD").strip()
    (atom / "README").write_text("hi\n")
    git(atom, "add", "README")
    git(atom, "commit", "-qm", "docs")
    docs = git(atom, "rev-parse", "HEAD").strip()
    (atom / "atom" / "extra.py").write_text("EXTRA = 1\n")
    git(atom, "add", "atom/extra.py")
    fixed = commit_file(
        atom,
        MODULE.replace(
            "        return mode",
            "        else:\n            mode = 0\n        return mode",
        ),
        "upstream makes series 1's change itself",
    )
    renamed = commit_file(
        atom,
        (atom / "atom" / "engine.py").read_text().replace("def step", "def advance"),
        "rename",
    )
    return pin, docs, fixed, renamed


def test_verdicts_culprit_and_three_way(project, atom, history):
    pin, docs, _fixed, renamed = history
    reports = sweep.sweep(
        atom, [pin, docs, renamed], load_all(), ("compile", "lint", "style"), pin=pin
    )
    first, second, last = ([v.verdict for v in r.verdicts] for r in reports)
    assert first == ["applied+verified", "applied+verified"]
    assert second == ["applied+verified", "applied+verified"]
    assert last == ["drifted", "drifted"]
    drift = reports[-1].verdicts[0]
    assert drift.culprit == renamed  # bisected between the samples docs and renamed
    assert (
        "edit engine.default-mode, atom/engine.py:1:" in drift.details[0]
        and "advance" in drift.details[0]
    )
    assert [v.three_way for v in reports[0].verdicts] == [True, True]

    rows = sweep.survival(reports)
    assert rows[0]["good_samples"] == 2 and rows[0]["first_break"] == renamed
    assert rows[0]["survives_until"] == docs


def test_progress_counts_each_series_at_the_pin_and_at_each_commit(
    project, atom, history
):
    pin, docs, _fixed, renamed = history
    steps = []
    sweep.sweep(
        atom,
        [pin, docs, renamed],
        load_all(),
        ("compile",),
        pin=pin,
        progress=lambda *step: steps.append(step),
    )
    labels = [now for _, _, now in steps]
    # 2 series at the pin and at each of 3 commits, then the two drifts bisected
    assert sorted({done for done, _, _ in steps}) == list(range(10))
    assert {total for _, total, _ in steps} == {8, 10}
    assert labels[0] == f"pin {pin[:12]}: 01-first"
    assert f"commit 3/3 {renamed[:12]}: 02-second" in labels
    assert labels[-1] == "bisecting 02-second"


def test_already_upstream(project, atom, history):
    _pin, _docs, fixed, _renamed = history
    (report,) = sweep.sweep(atom, [fixed], load_all(), ("compile",))
    assert report.verdicts[0].verdict == "already upstream"
    assert report.verdicts[0].upstream_edits == ["engine.default-mode"]


def test_verify_failed_names_the_check(project, atom, history, monkeypatch):
    pin = history[0]
    edits = project / "patches" / "02-second" / "engine.py"
    edits.write_text(
        edits.read_text().replace('"print(mode)"', '"print(undefined_name)"')
    )
    (report,) = sweep.sweep(atom, [pin], load_all(), ("compile", "lint"))
    second = report.verdicts[1]
    assert second.verdict == "verify-failed"
    assert any("lint: atom/engine.py: F821" in d for d in second.details)


def test_sample_keeps_both_ends(atom, history):
    pin, _docs, fixed, renamed = history
    assert sweep.sample(atom, pin, renamed, 2) == [pin, fixed, renamed]


def test_cli_baseline_exit_status(
    project, atom, history, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("ATOM_CKFREE_CACHE", str(tmp_path / "cache"))
    upstream_dir = str(atom)
    git(atom, "branch", "-f", "main", "HEAD")
    code = main(
        [
            "sweep",
            "--upstream",
            upstream_dir,
            "--ref",
            history[1],
            "--checks",
            "compile",
            "--no-3way",
            "--json",
        ]
    )
    good = json.loads(capsys.readouterr().out)
    assert code == 0
    (tmp_path / "good.json").write_text(json.dumps(good))
    markdown = tmp_path / "report.md"
    code = main(
        [
            "sweep",
            "--offline",
            "--ref",
            history[3],
            "--checks",
            "compile",
            "--no-3way",
            "--baseline",
            str(tmp_path / "good.json"),
            "--markdown",
            str(markdown),
        ]
    )
    _out, err = capsys.readouterr()
    assert code == 1 and "worse:" in err and "applied+verified → drifted" in err
    assert "| 1 | 01-first | **drifted** |" in markdown.read_text()
