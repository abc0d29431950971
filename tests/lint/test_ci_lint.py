"""Series 5-7 on the patched pin tree: actionlint on the workflows they touch or
add, shellcheck on their scripts, ATOM's style gates (black --check, and no ruff
finding that the pin does not already have) on their Python files, and the golden
output script's documented exit codes."""

from __future__ import annotations

import os

import pytest

from atom_ckfree.verify import black_unclean, lint_findings
from tests.tools import run, tool


def test_actionlint_passes_on_every_workflow_the_series_touch(
    patched_tree, files_5_to_7
):
    workflows = [f for f in files_5_to_7 if f.startswith(".github/workflows/")]
    assert {
        ".github/workflows/pre-checks.yaml",
        ".github/workflows/atom-test.yaml",
        ".github/workflows/sync-upstream.yaml",
    } <= set(workflows)
    # actionlint reads .github/actionlint.yaml (ATOM's self-hosted runner labels)
    result = run([tool("actionlint"), "-no-color", *workflows], patched_tree)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_on_the_scripts(patched_tree, files_5_to_7):
    scripts = [f for f in files_5_to_7 if f.endswith(".sh")]
    assert "scripts/test_golden_output.sh" in scripts
    result = run([tool("shellcheck"), *scripts], patched_tree)
    assert result.returncode == 0, result.stdout + result.stderr


def python_files(files):
    return [f for f in files if f.endswith(".py")]


def test_black_check_on_every_python_file_the_series_write(patched_tree, files_5_to_7):
    files = python_files(files_5_to_7)
    if not files:
        pytest.skip("series 5-7 write no Python file yet")
    assert black_unclean(patched_tree, files) == set()


def test_no_new_ruff_findings_in_the_files_the_series_write(
    pin_template, patched_tree, files_5_to_7
):
    files = python_files(files_5_to_7) + ["pyproject.toml"]
    new = lint_findings(patched_tree, files) - lint_findings(pin_template, files)
    assert not new, "\n".join(
        f"{f}: {code} {msg} (x{n})" for (f, code, msg), n in new.items()
    )


# -- scripts/test_golden_output.sh, with a stand-in for `python3` ------------------

GOLDEN = "Prompt: 'hi'\nCompletion: 'hello'\n"


@pytest.fixture
def golden_env(patched_tree, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text(
        "#!/usr/bin/env bash\n"
        'echo "loading model..."\n'
        'printf "%b" "$FAKE_OUTPUT"\n'
        'exit "${FAKE_STATUS:-0}"\n'
    )
    (fake / "python3").chmod(0o755)
    golden = tmp_path / "golden.txt"
    golden.write_text(GOLDEN)
    script = patched_tree / "scripts/test_golden_output.sh"

    def go(*args, output=GOLDEN, status=0):
        env = dict(
            os.environ,
            PATH=f"{fake}:{os.environ['PATH']}",
            FAKE_OUTPUT=output,
            FAKE_STATUS=str(status),
        )
        return run(["bash", str(script), *args], tmp_path, env=env)

    return go, golden


def test_golden_script_exit_codes(golden_env):
    go, golden = golden_env
    assert go("-g", str(golden)).returncode == 0
    mismatch = go("-g", str(golden), output="Prompt: 'hi'\nCompletion: 'bye'\n")
    assert mismatch.returncode == 1
    assert (
        "-Completion: 'hello'" in mismatch.stdout
        and "+Completion: 'bye'" in mismatch.stdout
    )
    assert go("-g", str(golden), status=3).returncode == 4
    assert go("-g", str(golden), output="no lines\n").returncode == 4
    assert go("-g", str(golden.with_name("missing.txt"))).returncode == 3
    assert go("-m", "org/NoSuchModel").returncode == 3
    assert go("-z").returncode == 2
    assert "Exit codes" in go("-h").stdout


def test_reapplying_every_series_is_a_no_op(patched_tree):
    from atom_ckfree import engine
    from atom_ckfree.series import load_all, select
    from atom_ckfree.workspace import WorkTree

    all_series = load_all()
    results = engine.apply(
        WorkTree(patched_tree), select("all", all_series), all_series, allow_dirty=True
    )
    assert {r.series.number: r.outcome for r in results} == {
        s.number: "already applied" for s in all_series
    }
