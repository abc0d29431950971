"""Checks a patched tree must pass, each measured against the unpatched tree, so that
upstream's own findings and failures are never blamed on a series."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from . import project
from .errors import FaultError

CHECKS = ("compile", "lint", "style", "tests")


@dataclass
class Baseline:
    """What the unpatched tree already has: ruff findings, black-unclean files, its
    suite's run (None when tests are not checked)."""

    lint: Counter
    unclean: set[str]
    tests: TestRun | None


def _python(files: list[str]) -> list[str]:
    return [f for f in files if f.endswith(".py")]


def compile_errors(tree: Path, files: list[str]) -> list[str]:
    errors = []
    for rel in _python(files):
        path = tree / rel
        if path.is_file():
            try:
                compile(path.read_text(), rel, "exec")
            except SyntaxError as error:
                errors.append(f"{rel}:{error.lineno}: {error.msg}")
    return errors


def _ruff_config(tree: Path) -> list[str]:
    """The tree's own ruff configuration and nothing from this machine (a user-level
    ruff.toml would otherwise apply); without one, the manifest's rules, so that a
    newer ruff's defaults are not blamed on a series."""
    for name in ("ruff.toml", ".ruff.toml"):
        if (tree / name).exists():
            return ["--config", str(tree / name)]
    if "[tool.ruff" in (tree / "pyproject.toml").read_text():
        return ["--config", str(tree / "pyproject.toml")]
    return ["--isolated", "--select", ",".join(project.current().lint_select)]


def lint_findings(tree: Path, files: list[str]) -> Counter:
    """ruff's findings with ATOM's configuration (ruff's defaults include pyflakes'
    undefined names and unused imports), by file, code and message."""
    present = [
        f
        for f in files
        if (f.endswith((".py", "pyproject.toml"))) and (tree / f).is_file()
    ]
    if not present:
        return Counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--output-format",
            "json",
            "--exit-zero",
            *_ruff_config(tree),
            *present,
        ],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise FaultError(
            f"ruff failed on {tree}", "check the ruff installation", result.stderr
        )
    return Counter(
        (
            (tree / f["filename"]).resolve().relative_to(tree.resolve()).as_posix(),
            f["code"],
            f["message"],
        )
        for f in json.loads(result.stdout or "[]")
    )


def black_unclean(tree: Path, files: list[str]) -> set[str]:
    present = [f for f in _python(files) if (tree / f).is_file()]
    if not present:
        return set()
    result = subprocess.run(
        [sys.executable, "-m", "black", "--check", "--quiet", *present],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    return {
        (tree / p).resolve().relative_to(tree.resolve()).as_posix()
        for p in re.findall(r"would reformat (.+)", result.stderr)
    }


@dataclass
class TestRun:
    """One run of the project's suite: the tests that ran (skips not counted), the
    ones that failed or errored (by JUnit class and name), and why the run is not
    whole (nothing collected, interrupted, timed out, no report), if it is not."""

    ran: int
    skipped: int
    failing: set[str]
    how: str
    broken: str | None = None


_SUITE_TIMEOUT_S = 1800


def _command(tree: Path, report: Path, scratch: Path) -> tuple[list[str], dict, str]:
    """Upstream's runner script where the tree has one, with ``python`` this
    interpreter (a wrapper, not a link: a link to a venv's python leaves the venv);
    else the manifest's command."""
    upstream = project.current()
    env = dict(os.environ)
    # One module that cannot be collected (at ATOM main, tests/test_decode_input_ids.py
    # imports aiter) would interrupt the whole run: it is counted as a failure of
    # its own instead, and the rest of the suite still runs and still counts.
    env["PYTEST_ADDOPTS"] = " ".join(
        filter(
            None,
            [
                env.get("PYTEST_ADDOPTS"),
                "-p no:cacheprovider --continue-on-collection-errors",
            ],
        )
    )
    if (tree / upstream.test_runner).is_file():
        for name in ("python", "python3"):
            wrapper = scratch / name
            wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            wrapper.chmod(0o755)
        env["PATH"] = f"{scratch}{os.pathsep}{env.get('PATH', '')}"
        env[upstream.test_runner_report_env] = str(report)
        return ["bash", upstream.test_runner], env, upstream.test_runner
    command = [*upstream.test_command, *upstream.test_paths]
    return (
        [sys.executable, "-m", *command, f"--junitxml={report}"],
        env,
        shlex.join(["python", "-m", *command]),
    )


def run_tests(tree: Path) -> TestRun:
    """The project's CPU suite on ``tree``, run the way upstream runs it at that
    commit, read back from its JUnit report."""
    with tempfile.TemporaryDirectory(prefix="ckfree-tests-") as scratch:
        report = Path(scratch) / "report.xml"
        command, env, how = _command(tree, report, Path(scratch))
        try:
            result = subprocess.run(
                command,
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
                timeout=_SUITE_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return TestRun(0, 0, set(), how, f"timed out after {_SUITE_TIMEOUT_S} s")
        if not report.is_file():
            last = (result.stdout + result.stderr).strip().splitlines()[-1:]
            return TestRun(0, 0, set(), how, f"exited {result.returncode}: {last}")
        run = _read_junit(report, how)
    # pytest: 0 all passed, 1 some failed, 5 nothing collected; else interrupted
    if result.returncode == 5 or (result.returncode in (0, 1) and run.ran == 0):
        run.broken = "ran no test"
    elif result.returncode not in (0, 1):
        run.broken = f"stopped: pytest exited {result.returncode} after {run.ran} tests"
    return run


def _read_junit(report: Path, how: str) -> TestRun:
    ran = skipped = 0
    failing = set()
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome = {child.tag for child in case}
        if "skipped" in outcome:
            skipped += 1
            continue
        ran += 1
        if outcome & {"failure", "error"}:
            failing.add(f"{case.get('classname')}::{case.get('name')}")
    return TestRun(ran, skipped, failing, how)


def baseline(tree: Path, files: list[str], checks: tuple[str, ...]) -> Baseline:
    return Baseline(
        lint_findings(tree, files) if "lint" in checks else Counter(),
        black_unclean(tree, files) if "style" in checks else set(),
        run_tests(tree) if "tests" in checks else None,
    )


@dataclass
class Findings:
    """What a series broke (each entry names the check and what it found), what
    the ``tests`` check counted before and after it, and whether the unpatched
    tree's suite could be compared with at all."""

    problems: list[str] = field(default_factory=list)
    tests: dict | None = None
    unverifiable: str | None = None


def problems(
    tree: Path, files: list[str], checks: tuple[str, ...], before: Baseline
) -> Findings:
    found = Findings()
    if "compile" in checks:
        found.problems += [f"compile: {e}" for e in compile_errors(tree, files)]
    if "lint" in checks:
        new = lint_findings(tree, files) - before.lint
        found.problems += [
            f"lint: {f}: {code} {message}" for (f, code, message) in sorted(new)
        ]
    if "style" in checks:
        found.problems += [
            f"style: black would reformat {f}"
            for f in sorted(black_unclean(tree, files) - before.unclean)
        ]
    if before.tests is not None:
        found.tests = {"runner": before.tests.how, "tests_before": before.tests.ran}
        if before.tests.broken:
            found.unverifiable = (
                f"tests: the unpatched suite ({before.tests.how}) {before.tests.broken}:"
                " nothing to compare with"
            )
            return found
        now = run_tests(tree)
        found.tests["tests_after"] = now.ran
        if now.broken:
            found.problems.append(f"tests: the patched suite {now.broken}")
        found.problems += [
            f"tests: {t}" for t in sorted(now.failing - before.tests.failing)
        ]
        before.tests.failing |= now.failing  # blamed on the first series that causes it
    return found
