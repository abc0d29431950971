"""TOML edit primitives on a miniature pyproject written for these tests."""

import pytest

from atom_ckfree.edits import FORMATS, AddArrayItem, Conflict

PYPROJECT = """\
[project]
name = "mini"   # the name
dependencies = ["numpy", "torch"]

# packaging
[tool.setuptools.packages.find]
include = ["mini*"]
"""

TOML = FORMATS["toml"]


def run(edits, text=PYPROJECT):
    doc = TOML.parse(text)
    changed = []
    for edit in edits:
        doc, c = edit.apply(doc)
        changed.append(c)
    return TOML.finish(text, TOML.render(doc)), changed


MARKER = AddArrayItem(
    "gpu-marker",
    ("tool", "pytest", "ini_options"),
    "markers",
    "gpu: needs a GPU",
    match="gpu:",
)


def test_add_array_item_creates_the_table_and_keeps_every_other_byte():
    out, changed = run([MARKER])
    assert changed == [True]
    assert out.startswith(PYPROJECT)
    assert (
        out[len(PYPROJECT) :]
        == '\n[tool.pytest.ini_options]\nmarkers = [\n    "gpu: needs a GPU",\n]\n'
    )
    assert run([MARKER], out) == (out, [False])


def test_add_array_item_appends_to_an_existing_array_once():
    edit = AddArrayItem("dep", ("project",), "dependencies", "xxhash")
    out, changed = run([edit])
    assert changed == [True]
    assert out == PYPROJECT.replace('"torch"]', '"torch", "xxhash"]')
    assert run([edit], out) == (out, [False])


def test_add_array_item_recognises_a_reworded_entry_by_its_prefix():
    text = PYPROJECT + '\n[tool.pytest.ini_options]\nmarkers = ["gpu: runs on a GPU"]\n'
    assert run([MARKER], text) == (text, [False])


def test_add_array_item_conflicts_when_the_key_is_no_array():
    with pytest.raises(Conflict) as err:
        run([AddArrayItem("x", ("project",), "name", "y")])
    assert err.value.line == 2 and "mini" in err.value.found


def test_add_array_item_goes_after_the_tables_last_value_not_its_trailing_comments():
    # the comment and the blank line before [tool.setuptools...] stay with that table
    edit = AddArrayItem("dep", ("project",), "optional", "gpu")
    out, changed = run([edit])
    assert changed == [True]
    assert out == PYPROJECT.replace(
        'torch"]\n', 'torch"]\noptional = [\n    "gpu",\n]\n'
    )
    assert run([edit], out) == (out, [False])


def test_a_table_path_through_a_value_is_a_conflict():
    with pytest.raises(Conflict) as err:
        run([AddArrayItem("x", ("project", "name"), "k", 1)])
    assert "[project.name]" in err.value.expected
