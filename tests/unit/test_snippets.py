"""``snippet``: code an edit inserts, read from ``snippets/`` beside its module."""

from __future__ import annotations

import libcst
import pytest

from atom_ckfree.edits import InsertStatements, snippet, stmt
from atom_ckfree.errors import SeriesError


def test_a_snippet_is_read_beside_the_edits_module(tmp_path):
    (tmp_path / "snippets").mkdir()
    (tmp_path / "snippets" / "hook.py").write_text("if ready:\n    go()\n")
    code = snippet(str(tmp_path / "edits.py"), "hook.py")
    assert code == "if ready:\n    go()\n"
    edit = InsertStatements("x.hook", scope="", after=stmt("ready = 1"), code=code)
    doc, changed = edit.apply(libcst.parse_module("ready = 1\n"))
    assert changed and doc.code == "ready = 1\nif ready:\n    go()\n"


def test_a_missing_snippet_is_a_series_error_naming_the_file(tmp_path):
    with pytest.raises(SeriesError) as error:
        snippet(str(tmp_path / "edits.py"), "gone.py")
    assert str(tmp_path / "snippets" / "gone.py") in error.value.message
    assert "\n" not in str(error.value)
