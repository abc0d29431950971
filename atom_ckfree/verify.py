"""Checks a patched tree must pass, each measured against the unpatched tree, so that
upstream's own findings and failures are never blamed on a series."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import project
from .errors import FaultError

CHECKS = ("compile", "lint", "style", "tests")


@dataclass
class Baseline:
    """What the unpatched tree already has: ruff findings, black-unclean files,
    failing tests (None when tests are not checked)."""

    lint: Counter
    unclean: set[str]
    failing: set[str] | None


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
    """ATOM's own ruff configuration and nothing from this machine (a user-level
    ruff.toml would otherwise apply); without one, ruff's defaults."""
    for name in ("ruff.toml", ".ruff.toml"):
        if (tree / name).exists():
            return ["--config", str(tree / name)]
    if "[tool.ruff" in (tree / "pyproject.toml").read_text():
        return ["--config", str(tree / "pyproject.toml")]
    return ["--isolated"]


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


def failing_tests(tree: Path) -> set[str]:
    """Node ids that fail or error in the project's CPU suite, run as the manifest
    says (``[tests]``)."""
    upstream = project.current()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            *upstream.test_command,
            "-p",
            "no:cacheprovider",
            "-rfE",
            *upstream.test_paths,
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=900,
    )
    failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.MULTILINE))
    if result.returncode not in (0, 1, 5) and not failed:
        failed.add(
            f"pytest exited {result.returncode}: {result.stdout.strip().splitlines()[-1:]}"
        )
    return failed


def baseline(tree: Path, files: list[str], checks: tuple[str, ...]) -> Baseline:
    return Baseline(
        lint_findings(tree, files) if "lint" in checks else Counter(),
        black_unclean(tree, files) if "style" in checks else set(),
        failing_tests(tree) if "tests" in checks else None,
    )


def problems(
    tree: Path, files: list[str], checks: tuple[str, ...], before: Baseline
) -> list[str]:
    """What the series broke: each entry names the check and what it found."""
    found = []
    if "compile" in checks:
        found += [f"compile: {e}" for e in compile_errors(tree, files)]
    if "lint" in checks:
        new = lint_findings(tree, files) - before.lint
        found += [f"lint: {f}: {code} {message}" for (f, code, message) in sorted(new)]
    if "style" in checks:
        found += [
            f"style: black would reformat {f}"
            for f in sorted(black_unclean(tree, files) - before.unclean)
        ]
    if "tests" in checks and before.failing is not None:
        now = failing_tests(tree)
        found += [f"tests: {t}" for t in sorted(now - before.failing)]
        before.failing |= now  # a failure is blamed on the first series that causes it
    return found
