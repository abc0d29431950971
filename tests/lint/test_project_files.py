"""This project's own nightly workflow and job image pass their linters."""

from __future__ import annotations

from pathlib import Path

from tests.tools import run, tool

ROOT = Path(__file__).resolve().parents[2]


def test_nightly_rebase_workflow_passes_actionlint():
    result = run(
        [tool("actionlint"), "-no-color", ".github/workflows/nightly-rebase.yml"], ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_job_image_passes_hadolint():
    result = run([tool("hadolint"), "docker/Dockerfile"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
