"""The apply/status/list verbs on a miniature ATOM and a miniature set of series."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from atom_ckfree.cli import main
from tests.tools import PIN

from .conftest import git


def snapshot(tree: Path) -> dict[str, str]:
    return {
        str(p.relative_to(tree)): p.read_text()
        for p in sorted(tree.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_apply_then_reapply_is_a_noop(project, atom, capsys):
    code, out, _ = cli(capsys, "apply", "--atom", str(atom), "--series", "1", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["series"][0]["outcome"] == "applied"
    assert report["series"][0]["files"] == ["atom/engine.py", "atom/extra.py"]
    assert (
        "        else:\n            mode = 0\n"
        in (atom / "atom" / "engine.py").read_text()
    )
    assert (atom / "atom" / "extra.py").read_text() == "EXTRA = 1\n"

    before = snapshot(atom)
    code, out, _ = cli(capsys, "apply", "--atom", str(atom), "--series", "1", "--json")
    assert code == 0 and json.loads(out)["series"][0]["outcome"] == "already applied"
    assert snapshot(atom) == before


def test_status_reports_each_state(project, atom, capsys):
    _, out, _ = cli(capsys, "status", "--atom", str(atom), "--json")
    assert [s["state"] for s in json.loads(out)["series"]] == [
        "not applied",
        "not applied",
    ]
    cli(capsys, "apply", "--atom", str(atom), "--series", "1")
    (atom / "atom" / "extra.py").unlink()
    _code, out, _ = cli(capsys, "status", "--atom", str(atom), "--json")
    assert json.loads(out)["series"][0]["state"] == "partly applied"


def test_dry_run_prints_the_diff_and_writes_nothing(project, atom, capsys):
    before = snapshot(atom)
    code, out, _ = cli(
        capsys, "apply", "--atom", str(atom), "--series", "1-2", "--dry-run"
    )
    assert code == 0
    assert (
        "+        else:" in out
        and "+        print(mode)" in out
        and "+EXTRA = 1" in out
    )
    assert snapshot(atom) == before


def test_commit_makes_one_commit_per_series(project, atom, capsys, monkeypatch):
    code, _, _ = cli(
        capsys, "apply", "--atom", str(atom), "--series", "all", "--commit"
    )
    assert code == 0
    log = git(atom, "log", "--format=%B%x00", "-2").split("\0")
    assert log[0].strip().startswith("[CK-free 2/2] Log the mode")
    assert (
        log[1]
        .strip()
        .startswith("[CK-free 1/2] Give step a default mode\n\nThe default.")
    )
    assert git(atom, "status", "--porcelain") == ""


def test_missing_dependency_is_refused_before_anything_changes(project, atom, capsys):
    before = snapshot(atom)
    code, _, err = cli(capsys, "apply", "--atom", str(atom), "--series", "2")
    assert code == 2
    assert "series 2 (second) needs series 1" in err and "--series 1,2" in err
    assert snapshot(atom) == before


def test_status_exits_1_when_a_series_conflicts(project, atom, capsys):
    (atom / "atom" / "extra.py").write_text("MINE = 1\n")
    before = snapshot(atom)
    code, out, _ = cli(capsys, "status", "--atom", str(atom), "--json")
    assert code == 1
    assert json.loads(out)["series"][0]["state"] == "conflicting"
    assert snapshot(atom) == before


def test_the_tools_own_commits_on_the_pin_are_not_warned_about(
    project, atom, capsys, monkeypatch
):
    manifest = project / "patches" / "project.toml"
    head = git(atom, "rev-parse", "HEAD").strip()
    manifest.write_text(manifest.read_text().replace(PIN, head))
    assert cli(capsys, "apply", "--atom", str(atom), "--commit")[0] == 0
    for verb in ("status", "apply"):
        code, _, err = cli(capsys, verb, "--atom", str(atom))
        assert code == 0 and "not the pin" not in err, err
    git(atom, "commit", "-q", "--allow-empty", "-m", "someone else's commit")
    _, _, err = cli(capsys, "status", "--atom", str(atom))
    assert "not the pin" in err


def test_dependency_already_applied_is_enough(project, atom, capsys):
    cli(capsys, "apply", "--atom", str(atom), "--series", "1")
    code, _, _ = cli(capsys, "apply", "--atom", str(atom), "--series", "2")
    assert code == 0
    assert "print(mode)" in (atom / "atom" / "engine.py").read_text()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("3", "unknown series 3"),
        ("1,1", "given twice"),
        ("x", "cannot read series"),
        ("2-1", "empty series range"),
    ],
)
def test_bad_series_selection(project, atom, capsys, spec, message):
    code, _, err = cli(capsys, "apply", "--atom", str(atom), "--series", spec)
    assert code == 2 and message in err


def test_not_an_atom_tree(project, tmp_path, capsys):
    code, _, err = cli(capsys, "apply", "--atom", str(tmp_path))
    assert code == 2 and "not an ATOM source tree" in err
    code, _, err = cli(capsys, "status", "--atom", str(tmp_path / "missing"))
    assert code == 2 and "no such directory" in err


def test_dirty_tree_is_refused_unless_allowed(project, atom, capsys):
    (atom / "notes.txt").write_text("mine\n")
    code, _, err = cli(capsys, "apply", "--atom", str(atom), "--series", "1")
    assert (
        code == 2 and "uncommitted changes: notes.txt" in err and "--allow-dirty" in err
    )
    assert "else" not in (atom / "atom" / "engine.py").read_text()
    code, _, _ = cli(
        capsys, "apply", "--atom", str(atom), "--series", "1", "--allow-dirty"
    )
    assert code == 0


def test_conflict_names_series_edit_file_line_and_leaves_the_tree(
    project, atom, capsys
):
    source = (
        (atom / "atom" / "engine.py").read_text().replace("def step", "def step_v2")
    )
    (atom / "atom" / "engine.py").write_text(source)
    git(atom, "commit", "-qam", "upstream renamed step")
    before = snapshot(atom)
    code, out, err = cli(
        capsys, "apply", "--atom", str(atom), "--series", "1-2", "--json"
    )
    assert code == 1
    result = json.loads(out)["series"]
    assert [r["outcome"] for r in result] == ["conflict", "skipped"]
    conflict = result[0]["conflicts"][0]
    assert conflict["file"] == "atom/engine.py" and conflict["line"] == 1
    assert conflict["edit"] == "engine.default-mode" and "step_v2" in conflict["found"]
    assert snapshot(atom) == before
    code, _, err = cli(capsys, "apply", "--atom", str(atom), "--series", "1")
    assert "series 1, edit engine.default-mode, atom/engine.py:1" in err


def test_overlay_file_with_other_content_is_a_conflict(project, atom, capsys):
    (atom / "atom" / "extra.py").write_text("MINE = 1\n")
    git(atom, "add", "-A")
    git(atom, "commit", "-qm", "mine")
    code, _out, _ = cli(capsys, "apply", "--atom", str(atom), "--series", "1", "--json")
    assert code == 1
    assert (atom / "atom" / "extra.py").read_text() == "MINE = 1\n"
    assert "else" not in (atom / "atom" / "engine.py").read_text()


def test_failed_commit_undoes_the_series(project, atom, capsys, monkeypatch):
    hook = atom / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho refused by hook >&2\nexit 1\n")
    hook.chmod(0o755)
    before = snapshot(atom)
    code, _, err = cli(
        capsys, "apply", "--atom", str(atom), "--series", "1", "--commit"
    )
    assert code == 3 and "was undone" in err and "refused by hook" in err
    assert snapshot(atom) == before
    assert not (atom / "atom" / "extra.py").exists()


def test_list_shows_dependencies(project, capsys):
    _code, out, _ = cli(capsys, "list", "--json")
    data = json.loads(out)
    assert [(s["series"], s["depends_on"]) for s in data] == [(1, []), (2, [1])]


def test_console_script_entry_point_is_the_same_main():
    text = (
        Path(__file__)
        .resolve()
        .parents[2]
        .joinpath("tools", "apply_patches.py")
        .read_text()
    )
    assert "from atom_ckfree.cli import main" in text
    pyproject = (
        Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text()
    )
    assert 'apply-patches = "atom_ckfree.cli:main"' in textwrap.dedent(pyproject)


def test_overlay_files_keep_their_mode(project, atom, capsys):
    script = project / "overlay" / "atom" / "extra.py"
    script.chmod(0o755)
    assert cli(capsys, "apply", "--atom", str(atom), "--series", "1")[0] == 0
    assert (atom / "atom" / "extra.py").stat().st_mode & 0o777 == 0o755


def test_a_manifest_naming_a_missing_file_is_refused(project):
    from atom_ckfree.series import SeriesError, load_all

    (project / "overlay" / "atom" / "extra.py").unlink()
    with pytest.raises(
        SeriesError, match="names files that do not exist: \\['atom/extra.py'\\]"
    ):
        load_all()
