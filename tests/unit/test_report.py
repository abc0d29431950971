"""What a person sees: progress on stderr, the sweep table, ``list`` and the PR
bodies' Tests section."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from atom_ckfree import export, report, upstream
from atom_ckfree.cli import main
from atom_ckfree.series import load_all, project_root
from atom_ckfree.states import Verdict
from atom_ckfree.sweep import CommitReport, SeriesVerdict
from tests.tools import PIN

ROOT = Path(__file__).resolve().parents[2]
ESCAPE = "\x1b"

# first problems as a range sweep reported them onto upstream main (ffdf3bb5ddf8)
DRIFT = (
    "atom/model_ops/attention_mla.py:1338 attention-mla.fp8-scales-for-one-query-token: "
    'expected `if self.kv_cache_dtype.startswith("fp8"):` in '
    "MLAAttention._forward_prefill_mla; found no such code; closest is "
    '`is_fp8 = self.kv_cache_dtype.startswith("fp8")`'
)
LINT = (
    ".github/workflows/atom-test.yaml:54 atom-test.gpu-only-upstream: expected the key "
    "jobs.atom; found keys ['ci-gate', 'check-signal', 'download_aiter_wheel', "
    "'load-test-models', 'offline-smoke-test', 'atom-test', 'accuracy-dashboard']"
)


def sweep_reports() -> list[CommitReport]:
    verdicts = [
        SeriesVerdict(
            3, "03-mla-ck-free", Verdict.DRIFTED, [DRIFT, "a second problem"], ["x"]
        ),
        SeriesVerdict(6, "06-tests-ci", Verdict.DRIFTED, [LINT], [], False),
        SeriesVerdict(7, "07-nightly-sync", Verdict.VERIFIED, [], [], True),
    ]
    return [CommitReport("f" * 40, "2026-08-22", "Fix dpa spec (#1987)", verdicts)]


@pytest.mark.parametrize("columns", [80, 200])
def test_sweep_table_wraps_between_words_and_points_to_the_full_report(
    capsys, monkeypatch, columns
):
    monkeypatch.setattr(report.console, "width", columns)
    report.show_sweep(sweep_reports(), None)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= columns for line in lines), out
    words = out.split()
    for problem in (DRIFT, LINT):
        for word in problem.split():
            assert word in words, f"{word!r} cut at {columns} columns:\n{out}"
    assert "a second problem" not in out  # the first problem only; the count says 2
    assert "…" not in out
    assert "--json" in lines[-1] and "--markdown" in lines[-1]


def test_list_shows_each_series_files(project, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    # series 1's block ends where series 2's title starts
    first = out[: out.index("Log the mode")]
    assert re.search(r"edits\s+atom/engine\.py", first), out
    assert re.search(r"adds\s+atom/extra\.py", first), out
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["files"] == ["atom/engine.py", "atom/extra.py"]
    assert listed[0]["edits"] == ["atom/engine.py"]
    assert listed[0]["overlay"] == ["atom/extra.py"]
    assert listed[1]["depends_on"] == [1] and listed[1]["files"] == ["atom/engine.py"]


def test_progress_goes_to_stderr_as_plain_lines_when_not_a_terminal(
    project, atom, capsys
):
    assert main(["apply", "--atom", str(atom), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [s["outcome"] for s in json.loads(out)["series"]] == ["applied"] * 2
    assert ESCAPE not in err and ESCAPE not in out
    steps = [line for line in err.splitlines() if line.startswith("apply ")]
    assert [re.sub(r" \[[\d.]+ s\]", "", line) for line in steps] == [
        "apply 1/2 applying 01-first",
        "apply 2/2 applying 02-second",
        "apply done",
    ]


def test_progress_bar_on_a_terminal_leaves_json_stdout_clean(project, atom):
    """stderr a terminal, stdout a pipe (``apply --json | jq``): the live bar draws
    on the terminal and stdout is the JSON report alone."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100"}
    for forced in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR"):
        env.pop(forced, None)
    result = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "apply_patches.py"), "apply"]
        + ["--atom", str(atom), "--json"],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        text=True,
    )
    os.close(follower)
    shown = []  # read the terminal while the child runs, so that it never blocks

    def drain() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = result.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(leader)
    terminal = b"".join(shown).decode()
    assert result.returncode == 0
    assert ESCAPE not in out
    assert [s["outcome"] for s in json.loads(out)["series"]] == ["applied"] * 2
    assert "━" in terminal and "2/2" in terminal
    assert "apply done [" not in terminal  # the bar, not the plain lines for logs


def _adds_or_edits(series) -> list[str]:
    return [f for f in series.files if re.fullmatch(r"tests/(.+/)?test_\w+\.py", f)]


def test_pr_bodies_list_the_tests_that_cover_each_series_and_how_to_run_them():
    all_series = load_all()
    by_number = {s.number: s for s in all_series}
    added = {path for s in all_series for path in s.overlay}
    cache = upstream.cache_repo() if upstream.resolve(PIN) else None
    for series in all_series:
        body = export._resolve_placeholders(
            export.pr_body(series, "main", [], list(series.files), all_series),
            by_number,
        )
        tests = body[body.index("## Tests") :]
        assert "generated by" not in tests and "atom-ckfree's suite" not in tests
        assert series.ckfree_tests, f"{series.name}: no atom-ckfree test named"
        # the series' own test files are among those it lists
        assert set(_adds_or_edits(series)) <= set(series.atom_tests), series.name
        for test in series.ckfree_tests:
            assert (project_root() / test).is_file(), f"{series.name}: {test}"
            assert f"- `{test}`" in tests
        assert f"{export.CKFREE_TESTS_COMMAND} {' '.join(series.ckfree_tests)}" in tests
        for test in series.atom_tests:
            assert f"- `{test}`" in tests
            if test not in added and cache is not None:  # upstream's own test file
                found = subprocess.run(
                    ["git", "cat-file", "-e", f"{PIN}:{test}"], cwd=cache
                )
                assert found.returncode == 0, f"{series.name}: no {test} at the pin"
        if series.atom_tests:
            command = ["python", "-m", "pytest", "-q", "-m", "not gpu"]
            assert shlex.join([*command, *series.atom_tests]) in tests
    mha = by_number[2]
    body = export._resolve_placeholders(
        export.pr_body(mha, "main", [], list(mha.files), all_series), by_number
    )
    assert "`tests/test_ck_free_mode.py` (new in `ck-free/06-tests-ci`)" in body
    assert "with `ck-free/06-tests-ci` checked out" in body
    assert "`tests/test_envs.py` (ATOM's own)" in body
