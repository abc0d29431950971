"""The sweep's ``tests`` check on a miniature ATOM: it runs the suite the way the
commit's own runner script runs it (or the manifest's command where there is none),
counts what ran before and after each series, blames only new failures, and calls a
baseline that ran nothing or did not finish ``unverifiable``."""

from __future__ import annotations

import json
import textwrap

import pytest

from atom_ckfree import sweep
from atom_ckfree.cli import main
from atom_ckfree.series import load_all

from .conftest import git

RUNNER = ".github/scripts/run_unit_tests.sh"

ENGINE_TESTS = """\
from types import SimpleNamespace

from atom.engine import Engine


def test_prefill_mode():
    assert Engine().step(SimpleNamespace(kind="prefill")) == 1


def test_engine_is_a_class():
    assert isinstance(Engine, type)
"""

# passes before series 1 and fails after it: the default it adds is 0
DECODE_TEST = """\
from types import SimpleNamespace

import pytest

from atom.engine import Engine


def test_decode_has_no_mode():
    with pytest.raises(UnboundLocalError):
        Engine().step(SimpleNamespace(kind="decode"))
"""


def commit(tree, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", message)
    return git(tree, "rev-parse", "HEAD").strip()


def verdicts(atom, commit_id):
    (report,) = sweep.sweep(atom, [commit_id], load_all(), ("compile", "tests"))
    return report.verdicts


def test_counts_before_and_after_with_the_manifest_command(project, atom):
    head = commit(atom, {"tests/test_engine.py": ENGINE_TESTS}, "tests")
    first, second = verdicts(atom, head)
    assert first.verdict == "applied+verified", first.details
    assert first.tests == {
        "runner": "python -m pytest -q -m 'not gpu' tests",
        "tests_before": 2,
        "tests_after": 2,
    }
    assert second.verdict == "applied+verified" and second.tests["tests_after"] == 2


def test_the_commits_own_runner_script_selects_the_tests(project, atom):
    """Upstream's script leaves tests/plugin out; the check runs what it runs, with
    ``python`` this interpreter (the test imports libcst, which only our venv has
    for sure), and reads the JUnit report the script was told to write."""
    script = textwrap.dedent("""\
        #!/usr/bin/env bash
        set -euo pipefail
        python -m pytest tests/ --ignore=tests/plugin --junitxml="${UNIT_TEST_REPORT}"
        """)
    head = commit(
        atom,
        {
            "tests/test_engine.py": ENGINE_TESTS + "\nimport libcst  # noqa\n",
            "tests/plugin/test_plugin.py": "def test_needs_a_gpu():\n    raise SystemError\n",
            RUNNER: script,
        },
        "upstream's runner",
    )
    first, _ = verdicts(atom, head)
    assert first.verdict == "applied+verified", first.details
    assert first.tests == {"runner": RUNNER, "tests_before": 2, "tests_after": 2}


def test_a_new_failure_is_blamed_and_named(project, atom):
    head = commit(
        atom,
        {"tests/test_engine.py": ENGINE_TESTS, "tests/test_decode.py": DECODE_TEST},
        "tests",
    )
    first, second = verdicts(atom, head)
    assert first.verdict == "verify-failed"
    assert first.details == ["tests: tests.test_decode::test_decode_has_no_mode"]
    assert first.tests["tests_before"] == first.tests["tests_after"] == 3
    # blamed once, on the series that caused it
    assert second.verdict == "applied+verified", second.details


def test_upstreams_own_collection_error_is_neither_blamed_nor_fatal(project, atom):
    """A module that cannot be imported (ATOM main's test_decode_input_ids needs
    aiter) fails on its own; the rest of the suite still runs and counts."""
    head = commit(
        atom,
        {
            "tests/test_engine.py": ENGINE_TESTS,
            "tests/test_needs_aiter.py": "import aiter_not_here\n",
        },
        "tests",
    )
    first, _ = verdicts(atom, head)
    assert first.verdict == "applied+verified", first.details
    assert first.tests["tests_before"] == 3  # two tests and the collection error


@pytest.mark.parametrize(
    "files, why",
    [
        ({"tests/helpers.py": "HELPER = 1\n"}, "ran no test"),
        (
            {
                "tests/test_engine.py": ENGINE_TESTS,
                "tests/test_stop.py": "import pytest\n\n\ndef test_stop():\n"
                "    pytest.exit('the runner was stopped', returncode=2)\n",
            },
            "stopped: pytest exited 2",
        ),
    ],
    ids=["collects-nothing", "interrupted"],
)
def test_a_baseline_that_ran_nothing_or_stopped_is_unverifiable(
    project, atom, files, why
):
    head = commit(atom, files, "no usable suite")
    for verdict in verdicts(atom, head):
        assert verdict.verdict == "unverifiable"
        assert why in verdict.details[0] and "nothing to compare" in verdict.details[0]
        assert "tests_after" not in verdict.tests


def test_json_carries_the_counts(project, atom, capsys, monkeypatch):
    head = commit(atom, {"tests/test_engine.py": ENGINE_TESTS}, "tests")
    monkeypatch.setenv("ATOM_CKFREE_CACHE", str(atom.parent / "cache"))
    git(atom, "branch", "-f", "main", "HEAD")
    args = ["--upstream", str(atom), "--ref", head, "--checks", "tests", "--no-3way"]
    code = main(["sweep", *args, "--json"])
    series = json.loads(capsys.readouterr().out)["commits"][0]["series"]
    assert code == 0
    assert [s["tests"]["tests_before"] for s in series] == [2, 2]
    assert [s["tests"]["tests_after"] for s in series] == [2, 2]
