"""Bad input from a user or a series author: one error line that names the file or
path, the documented exit code, a JSON error object with ``--json``, and not one byte
of the ATOM tree (files, modes, index, HEAD, refs) changed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from atom_ckfree import cli, engine, upstream
from atom_ckfree.series import load_all, select
from tests.tools import PIN

from .conftest import ROOT, run_cli, tree_state

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the project's patches/ and overlay/, for breaking series files."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "patches", root / "patches")
    shutil.copytree(ROOT / "overlay", root / "overlay")
    return root


@pytest.fixture
def tree(make_atom_tree) -> Path:
    """A clean ATOM tree at the pin whose index's stat data is fresh, as in a user's
    clone (a copied tree's is stale, and the first ``git status`` rewrites it)."""
    tree = make_atom_tree()
    subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True)
    return tree


@pytest.fixture
def cache_copy(tmp_path) -> Path:
    """A copy of the upstream cache, as ``ATOM_CKFREE_CACHE``, for breaking it."""
    root = tmp_path / "cache"
    shutil.copytree(upstream.cache_repo(), root / "atom.git", symlinks=True)
    return root


def refused(run, code: int, *names, as_json: bool = False) -> str:
    """The run failed with ``code`` and one line naming each of ``names``."""
    assert run.code == code, run.err
    line = run.error_line
    assert line.startswith("error: "), line
    for name in names:
        assert str(name) in line, line
    if as_json:
        data = json.loads(run.out)
        assert data["exit_code"] == code and data["error"] and data["fix"], data
        assert data["error"] in line
    return line


def cache_refs(cache: Path) -> str:
    git_dir = cache / "atom.git"
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "for-each-ref"],
        capture_output=True,
        text=True,
    ).stdout


def folder_state(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


# --- series.toml broken by a series author ------------------------------------------

MANIFEST = "01-bug-fixes/series.toml"


def _replace(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new, 1)

    return edit


MANIFEST_BREAKS = {
    "toml-syntax": (_replace('slug = "bug-fixes"', 'slug = "bug-fixes'), ":2:"),
    "missing-title": (
        _replace('title = "Fix four bugs', 'headline = "Fix four bugs'),
        "'title' is missing",
    ),
    "number-a-string": (_replace("number = 1", 'number = "one"'), "'number' must"),
    "depends-on-strings": (
        _replace("depends_on = []", 'depends_on = ["2"]'),
        "'depends_on' must be a list of int",
    ),
    "depends-on-a-later-series": (
        _replace("depends_on = []", "depends_on = [5]"),
        "depends_on [5]",
    ),
    "edits-not-strings": (
        _replace('"atom/model_ops/linear.py" = "linear.py"', '"x.py" = 3'),
        "'edits' must be a dict of str or list",
    ),
    "names-a-missing-file": (
        _replace("overlay = []", 'overlay = ["atom/no_such_file.py"]'),
        "do not exist",
    ),
    "claims-another-series-overlay-file": (
        _replace("overlay = []", 'overlay = ["atom/model_ops/ck_free_mha.py"]'),
        "already claimed by series 1",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_BREAKS))
def test_a_broken_manifest_is_one_line_at_its_file(case, project, tree):
    edit, expected = MANIFEST_BREAKS[case]
    manifest = project / "patches" / MANIFEST
    manifest.write_text(edit(manifest.read_text()))
    before = tree_state(tree)
    env = {"ATOM_CKFREE_ROOT": str(project)}
    run = run_cli("apply", "--atom", str(tree), "--json", env=env)
    line = refused(run, 2, manifest, expected, as_json=True)
    assert tree_state(tree) == before, line


def test_list_reports_a_broken_manifest_as_json(project):
    manifest = project / "patches" / "04-moe-cascade" / "series.toml"
    manifest.write_text(manifest.read_text() + "\n[edits\n")
    run = run_cli("list", "--json", env={"ATOM_CKFREE_ROOT": str(project)})
    lines = len(manifest.read_text().splitlines())
    refused(run, 2, f"{manifest}:{lines}:", "not valid TOML", as_json=True)


# --- edits modules that do not load -------------------------------------------------

EDITS_MODULE = "01-bug-fixes/linear.py"
MODULE_BREAKS = {
    "syntax-error": ("\ndef broken(:\n", "syntax error"),
    "attribute-error": ("\nEDITS = EDITS + [EDITS.no_such_thing]\n", "AttributeError"),
    "import-error": ("\nfrom atom_ckfree.edits import NoSuchEdit\n", "ImportError"),
}


@pytest.mark.parametrize("case", sorted(MODULE_BREAKS))
def test_an_edits_module_that_fails_is_reported_at_file_and_line(case, project, tree):
    appended, expected = MODULE_BREAKS[case]
    module = project / "patches" / EDITS_MODULE
    module.write_text(module.read_text() + appended)
    line_number = len(module.read_text().splitlines())
    before = tree_state(tree)
    run = run_cli("status", "--atom", str(tree), env={"ATOM_CKFREE_ROOT": str(project)})
    refused(run, 2, f"{module}:{line_number}:", expected)
    assert tree_state(tree) == before


def test_an_edits_module_without_edits_is_refused(project, tree):
    module = project / "patches" / EDITS_MODULE
    module.write_text(module.read_text().replace("EDITS = [", "MY_EDITS = ["))
    before = tree_state(tree)
    run = run_cli("apply", "--atom", str(tree), env={"ATOM_CKFREE_ROOT": str(project)})
    refused(run, 2, module, "EDITS")
    assert tree_state(tree) == before


# --- paths that are not an ATOM tree -------------------------------------------------


def test_a_file_given_as_the_tree_is_not_a_directory(tmp_path):
    path = tmp_path / "atom"
    path.write_text("")
    run = run_cli("apply", "--atom", str(path), "--json")
    assert "not a directory" in refused(run, 2, path, as_json=True)
    assert path.read_text() == ""


def test_a_missing_tree_is_no_such_directory(tmp_path):
    run = run_cli("status", "--atom", str(tmp_path / "nowhere"))
    assert "no such directory" in refused(run, 2, tmp_path / "nowhere")


def test_a_repo_of_another_project_is_refused_and_untouched(tree):
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('name = "atom"', 'name = "other"')
    )
    subprocess.run(["git", "commit", "-qam", "other"], cwd=tree, check=True)
    before = tree_state(tree)
    run = run_cli("apply", "--atom", str(tree))
    refused(run, 2, tree, "'other'")
    assert tree_state(tree) == before


def test_a_tree_without_atom_modules_is_refused(tmp_path):
    fake = tmp_path / "fake"
    (fake / "atom").mkdir(parents=True)
    (fake / "atom" / "__init__.py").write_text("")
    (fake / "pyproject.toml").write_text('[project]\nname = "atom"\n')
    subprocess.run(["git", "init", "-q"], cwd=fake, check=True)
    before = tree_state(fake)
    run = run_cli("apply", "--atom", str(fake))
    refused(run, 2, fake, "atom/model_engine")
    assert tree_state(fake) == before


def test_a_clone_without_a_commit_gets_a_clear_error(tmp_path):
    fresh = _pin_files(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=fresh, check=True)
    before = tree_state(fresh)
    run = run_cli("status", "--atom", str(fresh), "--json")
    refused(run, 2, fresh, "no commit", as_json=True)
    assert tree_state(fresh) == before


def _pin_files(tmp_path: Path) -> Path:
    """ATOM's files at the pin, without git."""
    files = tmp_path / "fresh"
    files.mkdir()
    archive = subprocess.run(
        ["git", f"--git-dir={upstream.cache_repo()}", "archive", PIN],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(files)], input=archive, check=True)
    return files


# --- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("every", ["0", "-3", "x"])
def test_every_must_be_a_positive_number(every):
    run = run_cli(
        "sweep", "--offline", "--range", "HEAD~3..HEAD", "--every", every, "--json"
    )
    refused(run, 2, "--every", as_json=True)


def test_an_unknown_option_is_one_line(tree):
    before = tree_state(tree)
    run = run_cli("apply", "--atom", str(tree), "--bogus")
    refused(run, 2, "--bogus")
    assert tree_state(tree) == before


def test_the_dependency_hint_names_the_whole_closure_and_works(tree):
    before = tree_state(tree)
    run = run_cli("apply", "--atom", str(tree), "--series", "6")
    line = refused(run, 2, "--series 2,3,4,6")
    assert tree_state(tree) == before
    # what it suggests passes the same check on the same (unpatched) tree
    all_series = load_all()
    at_pin = {
        s.number: SimpleNamespace(series=s, state="not applied") for s in all_series
    }
    suggested = line.rsplit("--series ", 1)[1]
    engine._check_dependencies(select(suggested, all_series), at_pin)


@pytest.mark.parametrize(
    "content",
    ["{}", "not json", '{"commits": [{"series": [{"series": 1, "verdict": "odd"}]}]}'],
)
def test_a_bad_baseline_is_refused_before_the_sweep_runs(tmp_path, content):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(content)
    run = run_cli("sweep", "--offline", "--ref", PIN, "--baseline", str(baseline))
    refused(run, 2, baseline)
    assert "sweep 1/1" not in run.err


def test_a_cache_path_that_is_a_file_is_named(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("")
    env = {"ATOM_CKFREE_CACHE": str(cache)}
    run = run_cli("sweep", "--offline", "--json", env=env)
    assert "not a directory" in refused(run, 2, cache, as_json=True)
    run = run_cli("checkout", str(tmp_path / "dest"), env=env)
    refused(run, 2, cache)
    assert not (tmp_path / "dest").exists() and cache.read_text() == ""


# --- checkout and the upstream cache ------------------------------------------------


def test_a_corrupt_cache_is_reported_as_corrupt(tmp_path, cache_copy):
    for pack in (cache_copy / "atom.git" / "objects" / "pack").glob("*.pack"):
        with pack.open("r+b") as handle:
            handle.truncate(pack.stat().st_size // 2)
    before = folder_state(cache_copy)
    dest = tmp_path / "dest"
    run = run_cli("checkout", str(dest), env={"ATOM_CKFREE_CACHE": str(cache_copy)})
    line = refused(run, 3, cache_copy / "atom.git", "corrupt", "rm -rf")
    assert "fetch" not in line and not dest.exists()
    assert folder_state(cache_copy) == before


@pytest.mark.parametrize("made", [False, True])
def test_a_bad_upstream_leaves_no_checkout_and_no_origin(tmp_path, cache_copy, made):
    dest = tmp_path / "dest"
    if made:
        dest.mkdir()
    refs = cache_refs(cache_copy)
    bad = tmp_path / "no-such-atom"
    env = {"ATOM_CKFREE_CACHE": str(cache_copy)}
    run = run_cli("checkout", str(dest), "--upstream", str(bad), "--json", env=env)
    refused(run, 2, bad, as_json=True)
    assert dest.exists() == made and (not made or not any(dest.iterdir()))
    assert cache_refs(cache_copy) == refs


def test_a_sweep_with_a_bad_upstream_stops_before_sweeping(tmp_path, cache_copy):
    refs = cache_refs(cache_copy)
    bad = tmp_path / "no-such-atom"
    env = {"ATOM_CKFREE_CACHE": str(cache_copy)}
    run = run_cli("sweep", "--upstream", str(bad), "--checks", "compile", env=env)
    refused(run, 2, bad)
    assert "sweep 1/1" not in run.err and cache_refs(cache_copy) == refs


def test_unknown_checks_are_refused_before_the_fetch(tmp_path):
    env = {"ATOM_CKFREE_CACHE": str(tmp_path / "cache")}
    run = run_cli("sweep", "--checks", "compile,speed", "--json", env=env)
    refused(run, 2, "speed", as_json=True)
    assert not (tmp_path / "cache").exists()


def test_checkout_into_a_file_is_refused(tmp_path):
    dest = tmp_path / "dest"
    dest.write_text("mine\n")
    run = run_cli("checkout", str(dest))
    assert "not a directory" in refused(run, 2, dest)
    assert dest.read_text() == "mine\n"


def test_checkout_with_an_aiter_upstream_that_is_not_git_is_refused(tmp_path):
    env = {"ATOM_CKFREE_CACHE": str(tmp_path / "cache")}
    nowhere = tmp_path / "no-aiter"
    run = run_cli(
        "checkout", str(tmp_path / "dest"), "--aiter-upstream", str(nowhere), env=env
    )
    line = refused(run, 2, nowhere)
    assert "--aiter-upstream" in line
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "cache" / "aiter.git").exists()


# --- export's arguments ---------------------------------------------------------------


def test_export_to_an_out_that_is_a_file_is_refused(tree, tmp_path):
    out = tmp_path / "out"
    out.write_text("")
    before = tree_state(tree)
    run = run_cli("export", "--atom", str(tree), "--out", str(out), "--json")
    refused(run, 2, out, as_json=True)
    assert tree_state(tree) == before and out.read_text() == ""


def test_export_to_a_missing_remote_is_refused_before_building(tree, tmp_path):
    before = tree_state(tree)
    run = run_cli(
        "export", "--atom", str(tree), "--out", str(tmp_path / "o"), "--push", "nope"
    )
    refused(run, 2, "--push nope")
    assert tree_state(tree) == before and not (tmp_path / "o").exists()


# --- what main() turns into one line ---------------------------------------------------


@pytest.mark.parametrize(
    "raised, code, expected",
    [
        (KeyboardInterrupt(), 3, "interrupted"),
        (
            subprocess.CalledProcessError(
                128, ["git", "status"], "", "fatal: one\nfatal: two\n"
            ),
            3,
            "`git status` failed",
        ),
        (PermissionError(13, "Permission denied", "/x/y"), 3, "/x/y"),
    ],
)
def test_main_turns_faults_into_one_line(monkeypatch, capsys, raised, code, expected):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cli, "load_all", fail)
    assert cli.main(["list", "--json"]) == code
    out, err = capsys.readouterr()
    assert json.loads(out)["exit_code"] == code
    lines = err.splitlines()
    assert expected in lines[0] and all(line.startswith("    ") for line in lines[1:])
    assert "Traceback" not in err
