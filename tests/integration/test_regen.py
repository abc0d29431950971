"""``regen --check``: the committed expected diffs are what the series produce on the
pin now, and an edited (or missing) one is named as stale."""

from __future__ import annotations

import shutil

import pytest

from atom_ckfree.cli import main

from ..conftest import ROOT

integration = pytest.mark.integration


def copy_project(tmp_path, monkeypatch):
    """patches/ and overlay/ in a folder of their own, which the CLI then reads."""
    for folder in ("patches", "overlay"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.setenv("ATOM_CKFREE_ROOT", str(tmp_path))
    return tmp_path / "patches"


@integration
def test_committed_expected_diffs_are_current(pin_template, capsys):
    assert main(["regen", "--check"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.splitlines()
    # seven series on each base of the manifest: the pin and main
    assert len(out) == 14 and all(line.endswith(": current") for line in out)
    assert sum(line.endswith("on main: current") for line in out) == 7


@integration
def test_an_edited_expected_diff_is_stale(pin_template, tmp_path, monkeypatch, capsys):
    patches = copy_project(tmp_path, monkeypatch)
    diff = patches / "03-mla-ck-free" / "expected" / "pin.diff"
    committed = diff.read_text()
    diff.write_text(committed.replace("+", "-", 1))
    (patches / "05-docker-wheels" / "expected" / "main.diff").unlink()

    assert main(["regen", "--check"]) == 1
    out, err = capsys.readouterr()
    assert "03-mla-ck-free on pin: stale" in out
    assert "05-docker-wheels on main: stale" in out
    assert err.count("\n") == 1
    assert "03-mla-ck-free on pin, 05-docker-wheels on main" in err
    assert "02-mha" not in err
    assert diff.read_text() != committed  # --check writes nothing

    assert main(["regen"]) == 0
    assert diff.read_text() == committed
    assert main(["regen", "--check"]) == 0


def test_without_the_pin_in_the_cache_regen_says_how_to_seed_it(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("ATOM_CKFREE_CACHE", str(tmp_path / "empty-cache"))
    assert main(["regen", "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apply-patches checkout --upstream" in err
