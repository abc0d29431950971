"""This project's own workflows and job image pass their linters."""

from __future__ import annotations

import re
from pathlib import Path

from tests.tools import run, tool

ROOT = Path(__file__).resolve().parents[2]


def test_the_project_workflows_pass_actionlint():
    workflows = sorted(
        str(p.relative_to(ROOT)) for p in ROOT.glob(".github/workflows/*.yml")
    )
    assert ".github/workflows/newest-deps.yml" in workflows
    result = run([tool("actionlint"), "-no-color", *workflows], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_job_image_passes_hadolint():
    result = run([tool("hadolint"), "docker/Dockerfile"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command_and_both_commands_install_the_locks():
    blocks = re.findall(
        r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.DOTALL
    )
    main_job, tests = blocks[0], blocks[1]
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
    assert "--require-hashes -r requirements/run.lock" in main_job
    assert "--require-hashes -r requirements/test.lock" in tests
