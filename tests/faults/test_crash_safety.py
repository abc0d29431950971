"""Crash and race safety of ``apply``: a real apply killed, interrupted or failing at
chosen writes (the engine's ATOM_CKFREE_FAULT test hook), read-only files and folders,
``--commit`` refused by git, and two runs on one tree. Each case checks the exit code,
the one error line and the tree's whole state (files, modes, index, HEAD, refs, .git).

Series 5 (4 writes: docker/Dockerfile, docker/Dockerfile.wheels, docker/Dockerfile.clean,
.dockerignore) and 7 (2 writes: .github/workflows/sync-upstream.yaml,
scripts/test_golden_output.sh) need no libcst parsing, so most cases use them: a run
costs little more than starting Python.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from atom_ckfree import engine, journal
from atom_ckfree.errors import FaultError
from atom_ckfree.series import load_all, select
from atom_ckfree.workspace import WorkTree

from .conftest import Run, run_cli, tree_state

pytestmark = pytest.mark.integration

# commits made in different trees are the same commits
DATES = {
    "GIT_AUTHOR_DATE": "2026-02-24T12:00:00+00:00",
    "GIT_COMMITTER_DATE": "2026-02-24T12:00:00+00:00",
}


def apply(tree: Path, series: str, *extra: str, fault: str = "", env=None) -> Run:
    env = {**DATES, **(env or {}), "ATOM_CKFREE_FAULT": fault}
    return run_cli("apply", "--atom", str(tree), "--series", series, *extra, env=env)


def status(tree: Path) -> Run:
    return run_cli("status", "--atom", str(tree), "--json")


def error_line(run: Run) -> str:
    """The one error line, leaving out progress lines and warnings."""
    kept = [
        line
        for line in run.err.splitlines()
        if not line.startswith("warning:") and not line.startswith("series ")
    ]
    return Run(run.code, run.out, "\n".join(kept)).error_line


def warnings(run: Run) -> list[str]:
    return [line for line in run.err.splitlines() if line.startswith("warning:")]


@pytest.fixture(scope="module")
def expected(pin_template, tmp_path_factory):
    """``expected("5,7")`` → the state of a pin copy after a clean apply of those
    series (``commit=True``: with --commit); ``expected("")`` → the pin's own."""
    states: dict[tuple[str, bool], dict] = {}

    def get(series: str, commit: bool = False) -> dict:
        if (series, commit) not in states:
            tree = tmp_path_factory.mktemp("expected") / "atom"
            shutil.copytree(pin_template, tree, symlinks=True)
            if series:
                run = apply(tree, series, *(["--commit"] if commit else []))
                assert run.code == 0, run.err
            states[series, commit] = tree_state(tree)
        return states[series, commit]

    return get


def same_commits(state: dict) -> dict:
    """A state to compare across trees after --commit: the index file holds each
    tree's own stat data, so compare what it lists instead of its bytes."""
    return {k: v for k, v in state.items() if k != "index_bytes"}


@pytest.fixture
def no_scripts(make_atom_tree):
    """A pin copy without ``scripts/`` (committed), so series 7 creates a folder."""
    tree = make_atom_tree()
    for command in (
        ["rm", "-r", "-q", "scripts"],
        ["commit", "-q", "-m", "no scripts"],
    ):
        subprocess.run(
            ["git", *command], cwd=tree, check=True, env={**os.environ, **DATES}
        )
    return tree


@contextmanager
def read_only(folder: Path):
    """``folder`` cannot be written, even by root (an immutable folder, then)."""
    folder.chmod(0o555)
    as_root = os.geteuid() == 0
    if as_root and subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        folder.chmod(0o755)
        pytest.skip("running as root and chattr +i does not work here")
    try:
        yield
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


# --- killed: the next run finds the journal and puts the tree back ---------------


@pytest.mark.parametrize(
    "fault",
    [
        "kill-at-write:1",  # the new contents are being written, none renamed yet
        "kill-at-write:4",
        "kill-at-rename:2",  # docker/Dockerfile is the new one already
        "kill-at-rename:4",
        "kill-at-write:5",  # in series 7; series 5 was complete
        "kill-at-rename:6",
    ],
)
def test_killed_apply_is_undone_by_the_next_apply(make_atom_tree, expected, fault):
    tree = make_atom_tree()
    assert apply(tree, "5,7", fault=fault).code == -9
    assert (tree / ".git" / "ckfree-journal" / "journal.json").exists()
    assert (tree / ".git" / "ckfree.lock").exists()

    again = apply(tree, "5,7")
    assert again.code == 0, again.err
    said = warnings(again)
    assert len(said) == 2 and "removed the stale lock" in said[0]
    assert "restored the tree as it was before that series" in said[1]
    assert tree_state(tree) == expected("5,7")


def test_a_restore_that_fails_keeps_the_journal_for_the_next_run(make_atom_tree):
    tree = make_atom_tree()
    before = tree_state(tree)
    assert apply(tree, "5", fault="kill-at-rename:2").code == -9
    with read_only(tree / "docker"):  # the new Dockerfile cannot be put back yet
        stuck = apply(tree, "5")
    assert stuck.code == 3
    line = error_line(stuck)
    assert (
        "restoring" in line and "docker/Dockerfile" in line and "ckfree-journal" in line
    )
    assert (tree / ".git" / "ckfree-journal" / "journal.json").exists()
    assert apply(tree, "5", "--dry-run").code == 0
    assert tree_state(tree) == before


def test_killed_apply_is_undone_by_status(make_atom_tree, expected):
    tree = make_atom_tree()
    assert apply(tree, "5,7", fault="kill-at-write:6").code == -9
    seen = status(tree)  # status plans all seven series: one case only, it is slow
    assert seen.code == 0, seen.err
    assert any("restored the tree" in w for w in warnings(seen))
    assert tree_state(tree) == expected("5")  # series 5 was complete: it stays
    states = {s["series"]: s["state"] for s in json.loads(seen.out)["series"]}
    assert states[5] == "applied" and states[7] == "not applied"
    assert apply(tree, "5,7").code == 0
    assert tree_state(tree) == expected("5,7")


def test_killed_in_a_new_folder_removes_the_folder(no_scripts):
    before = tree_state(no_scripts)
    assert apply(no_scripts, "7", fault="kill-at-write:2").code == -9
    assert (no_scripts / "scripts").is_dir()
    again = apply(no_scripts, "7", "--dry-run")
    assert again.code == 0, again.err
    assert tree_state(no_scripts) == before


def test_a_new_folder_someone_filled_meanwhile_is_kept_and_said(no_scripts):
    assert apply(no_scripts, "7", fault="kill-at-rename:2").code == -9
    (no_scripts / "scripts" / "mine.txt").write_text("mine\n")
    again = apply(no_scripts, "7", "--dry-run")
    assert again.code == 2 and "uncommitted changes: scripts/mine.txt" in again.err
    assert any("kept scripts: not empty" in w for w in warnings(again))
    assert sorted(p.name for p in (no_scripts / "scripts").iterdir()) == ["mine.txt"]


def test_killed_after_commit_undoes_the_commit_and_the_index(make_atom_tree):
    tree = make_atom_tree()
    before = tree_state(tree)
    assert apply(tree, "5", "--commit", fault="kill-at-commit:1").code == -9
    assert tree_state(tree)["head"] != before["head"]
    again = apply(tree, "5", "--dry-run")
    assert again.code == 0, again.err
    assert tree_state(tree) == before


def test_killed_commit_run_then_rerun_commits_like_a_clean_one(
    make_atom_tree, expected
):
    tree = make_atom_tree()
    assert apply(tree, "5,7", "--commit", fault="kill-at-write:5").code == -9
    assert apply(tree, "5,7", "--commit").code == 0
    assert same_commits(tree_state(tree)) == same_commits(expected("5,7", commit=True))


def test_a_journal_begun_but_never_recorded_is_dropped(make_atom_tree, expected):
    tree = make_atom_tree()
    folder = tree / ".git" / "ckfree-journal"
    folder.mkdir()
    (folder / "journal.json.tmp").write_text('{"half')
    run = apply(tree, "5")
    assert run.code == 0, run.err
    assert tree_state(tree) == expected("5")


# --- interrupted: one line, exit 3, nothing changed ------------------------------


@pytest.mark.parametrize("extra", [(), ("--commit",)])
def test_ctrl_c_while_writing_undoes_the_series(make_atom_tree, extra):
    tree = make_atom_tree()
    before = tree_state(tree)
    run = apply(tree, "5", *extra, fault="sigint-at-write:3")
    assert run.code == 3
    assert "interrupted while writing series 5" in error_line(run)
    assert tree_state(tree) == before


# --- failed writes: the file is named, the series undone -------------------------


@pytest.mark.parametrize(
    "fault, file, undone_to",
    [
        ("enospc-at-write:1", "docker/Dockerfile", ""),
        ("enospc-at-write:3", "docker/Dockerfile.clean", ""),
        ("enospc-at-write:6", "scripts/test_golden_output.sh", "5"),
        ("fail-at-rename:1", "docker/Dockerfile", ""),
        ("fail-at-rename:4", ".dockerignore", ""),
    ],
)
def test_a_failed_write_names_the_file_and_undoes_the_series(
    make_atom_tree, expected, fault, file, undone_to
):
    tree = make_atom_tree()
    run = apply(tree, "5,7", fault=fault)
    assert run.code == 3
    line = error_line(run)
    assert f"writing {file} failed" in line and "was undone" in line
    reason = "No space left on device" if "enospc" in fault else "Input/output error"
    assert reason in line
    assert tree_state(tree) == expected(undone_to)


def test_disk_full_with_commit_leaves_nothing_staged(make_atom_tree):
    tree = make_atom_tree()
    before = tree_state(tree)
    run = apply(tree, "5", "--commit", fault="enospc-at-write:2")
    assert run.code == 3 and "docker/Dockerfile.wheels" in error_line(run)
    assert tree_state(tree) == before


def test_disk_full_in_a_new_folder_removes_it(no_scripts):
    before = tree_state(no_scripts)
    run = apply(no_scripts, "7", fault="enospc-at-write:2")
    assert run.code == 3 and "scripts/test_golden_output.sh" in error_line(run)
    assert tree_state(no_scripts) == before


def test_a_read_only_file_is_rewritten_and_stays_read_only(make_atom_tree, expected):
    tree = make_atom_tree()
    (tree / "docker" / "Dockerfile").chmod(0o444)
    run = apply(tree, "5")
    assert run.code == 0, run.err
    after = tree_state(tree)
    mode, digest = after["files"].pop("docker/Dockerfile")
    want = dict(expected("5")["files"])
    assert mode == oct(0o100444) and digest == want.pop("docker/Dockerfile")[1]
    assert after["files"] == want


def test_undo_puts_back_a_read_only_file_with_its_mode(make_atom_tree):
    tree = make_atom_tree()
    (tree / "docker" / "Dockerfile").chmod(0o444)
    before = tree_state(tree)
    run = apply(tree, "5", fault="enospc-at-write:4")
    assert run.code == 3 and ".dockerignore" in error_line(run)
    assert tree_state(tree) == before


def test_a_read_only_folder_fails_with_its_file_named(make_atom_tree):
    tree = make_atom_tree()
    with read_only(tree):  # .dockerignore (write 4) lives at the top
        before = tree_state(tree)
        run = apply(tree, "5")
        assert tree_state(tree) == before
    assert run.code == 3
    line = error_line(run)
    assert "writing .dockerignore failed" in line and "writable" in line


def test_a_folder_that_cannot_be_created_is_named(no_scripts):
    with read_only(no_scripts):  # scripts/ cannot be made
        before = tree_state(no_scripts)
        run = apply(no_scripts, "7")
        assert tree_state(no_scripts) == before
    assert run.code == 3
    assert "writing scripts/test_golden_output.sh failed" in error_line(run)


# --- --commit refused by git: nothing staged, HEAD where it was ------------------


def test_commit_without_a_git_identity(make_atom_tree, tmp_path, monkeypatch):
    tree = make_atom_tree()
    for key in list(os.environ):
        if key.startswith("GIT_") or key == "EMAIL":
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        # git may guess a name from the host; a user without a config has none
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "user.useConfigOnly",
        "GIT_CONFIG_VALUE_0": "true",
    }
    before = tree_state(tree)
    run = apply(tree, "5", "--commit", env=env)
    assert run.code == 3
    line = error_line(run)
    assert "committing series 5" in line and "email" in line and "user.email" in line
    assert tree_state(tree) == before


def test_commit_refused_by_a_pre_commit_hook(make_atom_tree):
    tree = make_atom_tree()
    hook = tree / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho not today >&2\nexit 1\n")
    hook.chmod(0o755)
    before = tree_state(tree)
    run = apply(tree, "5", "--commit")
    assert run.code == 3
    assert "committing series 5" in error_line(run) and "not today" in error_line(run)
    assert tree_state(tree) == before
    assert (
        subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=tree).returncode == 0
    )


def test_commit_with_a_stale_index_lock(make_atom_tree):
    tree = make_atom_tree()
    (tree / ".git" / "index.lock").write_text("")
    before = tree_state(tree)
    run = apply(tree, "5", "--commit")
    assert run.code == 3
    assert "index.lock" in error_line(run) and "File exists" in error_line(run)
    assert tree_state(tree) == before  # the lock is git's: it stays


def test_second_series_refused_keeps_the_first_committed(make_atom_tree, expected):
    tree = make_atom_tree()
    hook = tree / ".git" / "hooks" / "pre-commit"
    # refuses the commit that adds series 7's workflow
    hook.write_text(
        "#!/bin/sh\ngit diff --cached --name-only | grep -q sync-upstream && exit 1\n"
        "exit 0\n"
    )
    hook.chmod(0o755)
    run = apply(tree, "5,7", "--commit")
    assert run.code == 3 and "committing series 7" in error_line(run)
    assert same_commits(tree_state(tree)) == same_commits(expected("5", commit=True))


# --- one run at a time -----------------------------------------------------------


def test_a_second_apply_refuses_while_the_first_runs(
    make_atom_tree, expected, tmp_path
):
    tree = make_atom_tree()
    release = tmp_path / "go"
    first: list[Run] = []
    env = {"ATOM_CKFREE_FAULT_RELEASE": str(release)}
    worker = threading.Thread(
        target=lambda: first.append(
            apply(tree, "5,7", fault="pause-at-write:2", env=env)
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not release.with_name("go.waiting").exists():
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        holder = json.loads((tree / ".git" / "ckfree.lock").read_text())

        second = apply(tree, "5,7")
        assert second.code == 3
        line = error_line(second)
        assert (
            f"pid {holder['pid']}" in line and "ckfree.lock" in line and "apply" in line
        )

        # status first does this (in-process here: the verb plans all seven series):
        # it reports the running apply, and leaves its journal alone
        said: list[str] = []
        engine.recover(WorkTree(tree), said.append, busy_ok=True)
        assert len(said) == 1 and "is writing the tree" in said[0]
        assert (tree / ".git" / "ckfree-journal" / "journal.json").exists()
    finally:
        release.touch()
        worker.join(60)
    assert first[0].code == 0, first[0].err
    assert tree_state(tree) == expected("5,7")


def test_a_live_holder_is_named_and_its_lock_kept(make_atom_tree):
    tree = make_atom_tree()
    lock = tree / ".git" / "ckfree.lock"
    holder = {
        "pid": os.getpid(),
        "host": os.uname().nodename,
        "verb": "export",
        "started": "2026-12-04 01:00:00 UTC",
    }
    lock.write_text(json.dumps(holder))
    before = tree_state(tree)
    run = apply(tree, "5")
    assert run.code == 3
    assert f"export (pid {os.getpid()}" in error_line(run)
    assert tree_state(tree) == before and lock.exists()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_stale_lock_from_a_dead_pid_is_removed(make_atom_tree, expected):
    tree = make_atom_tree()
    pid = dead_pid()
    (tree / ".git" / "ckfree.lock").write_text(
        json.dumps(
            {
                "pid": pid,
                "host": os.uname().nodename,
                "verb": "apply",
                "started": "2026-12-04 01:00:00 UTC",
            }
        )
    )
    run = apply(tree, "5")
    assert run.code == 0, run.err
    assert any("stale lock" in w and f"pid {pid}" in w for w in warnings(run))
    assert tree_state(tree) == expected("5")


@pytest.mark.parametrize("age_s, refused", [(0, True), (60, False)])
def test_an_unreadable_lock_is_stale_only_when_old(
    make_atom_tree, expected, age_s, refused
):
    tree = make_atom_tree()
    lock = tree / ".git" / "ckfree.lock"
    lock.write_text("")
    old = time.time() - age_s
    os.utime(lock, (old, old))
    run = apply(tree, "5")
    if refused:
        assert run.code == 3 and "ckfree.lock" in error_line(run)
        assert lock.exists()
    else:
        assert run.code == 0, run.err
        assert tree_state(tree) == expected("5")


def test_status_ignores_a_lock_without_a_journal(make_atom_tree):
    """What ``status`` does before it reads (engine.recover), in-process: the whole
    verb plans all seven series, too slow to spend on this."""
    tree = make_atom_tree()
    lock = tree / ".git" / "ckfree.lock"
    lock.write_text(
        json.dumps(
            {
                "pid": dead_pid(),
                "host": os.uname().nodename,
                "verb": "apply",
                "started": "2026-12-04 01:00:00 UTC",
            }
        )
    )
    before = tree_state(tree)
    said: list[str] = []
    engine.recover(WorkTree(tree), said.append, busy_ok=True)
    assert not said and tree_state(tree) == before


def test_temps_beside_their_files_when_the_git_dir_is_on_another_disk(
    make_atom_tree, monkeypatch
):
    """(In-process: the other disk is simulated.) A failing rename after the first one
    leaves neither the first file changed nor a ``.NAME.ckfree-tmp`` behind."""
    tree = make_atom_tree()
    before = tree_state(tree)
    monkeypatch.setattr(journal, "_other_disk", lambda folder, tree: True)
    monkeypatch.setenv("ATOM_CKFREE_FAULT", "fail-at-rename:2")
    monkeypatch.setattr(engine, "_fault_counts", {})
    all_series = load_all()
    with pytest.raises(FaultError, match="writing docker/Dockerfile.wheels failed"):
        engine.apply(WorkTree(tree), select("5", all_series), all_series)
    assert tree_state(tree) == before
