"""The project manifest: the committed one loads; a broken one is one clear error
naming the file (and the line, for TOML syntax)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atom_ckfree import project
from atom_ckfree.errors import SeriesError

PATCHES = Path(__file__).resolve().parents[2] / "patches"


def test_the_committed_manifest_names_both_bases_and_the_tree():
    atom = project.load(PATCHES)
    assert atom.pin == "87460d31c6d651fb89ef6fcc5bddaece165b7933"
    assert atom.base("pin").commit == atom.pin
    assert atom.base("main").commit == "ffdf3bb5ddf8a15a64d521a2eeb3bc7438f9ac21"
    assert atom.base("next") is None
    assert atom.package == "atom" and "atom/__init__.py" in atom.markers
    assert atom.title(2, 7, "MHA") == "[CK-free 2/7] MHA"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.replace('branch = "main"', 'branch = "main'), ":7: "),
        (
            lambda t: t.replace('package = "atom"', 'pakage = "atom"'),
            "unknown keys ['pakage']",
        ),
        (lambda t: t.replace('package = "atom"\n', ""), "missing keys ['package']"),
        (
            lambda t: t.replace(
                'markers = ["atom/__init__.py", "atom/model_engine"]',
                'markers = "atom"',
            ),
            "markers must be a list",
        ),
        (lambda t: t.replace("[[bases]]", "[[based]]"), "unknown sections ['based']"),
    ],
)
def test_a_broken_manifest_is_one_error_naming_the_file(tmp_path, change, message):
    text = (PATCHES / project.MANIFEST).read_text()
    (tmp_path / project.MANIFEST).write_text(change(text))
    with pytest.raises(SeriesError) as error:
        project.load(tmp_path)
    assert str(tmp_path / project.MANIFEST) in error.value.message
    assert message in error.value.message
    assert "\n" not in error.value.message
