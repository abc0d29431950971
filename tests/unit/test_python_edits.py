"""Each Python edit primitive on hand-written miniatures: before → after, re-apply is
a no-op, a missing anchor is a conflict with a line, untouched bytes stay."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest

from atom_ckfree.edits import (
    AddElse,
    AddImport,
    Conflict,
    InsertStatements,
    RenameName,
    ReplaceArgument,
    ReplaceStatement,
    SetDictEntry,
    Unless,
    WrapInCondition,
    assign,
    call,
    defn,
    found,
    if_test,
    stmt,
)
from atom_ckfree.errors import SeriesError


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def run(edit, before: str) -> tuple[str, bool]:
    module, changed = edit.apply(cst.parse_module(before))
    return module.code, changed


def check(edit, before: str, after: str) -> None:
    """Applies to exactly ``after``, and applying again changes nothing."""
    got, changed = run(edit, src(before))
    assert changed
    assert got == src(after)
    again, changed_again = run(edit, got)
    assert not changed_again
    assert again == got


LOADER = """
class Loader:
    def load(self, kind, i):
        # pick the shard
        if kind == "a":
            offset = 1
        elif kind == "b":  # second
            offset = 2
        return offset
"""


def test_add_else_closes_the_chain():
    check(
        AddElse("e", "Loader.load", if_test('kind == "a"'), "offset = 0"),
        LOADER,
        """
        class Loader:
            def load(self, kind, i):
                # pick the shard
                if kind == "a":
                    offset = 1
                elif kind == "b":  # second
                    offset = 2
                else:
                    offset = 0
                return offset
        """,
    )


def test_add_else_conflicts_with_a_different_else():
    before = src(LOADER).replace(
        "        return offset",
        "        else:\n            offset = 9\n        return offset",
    )
    with pytest.raises(Conflict) as info:
        run(AddElse("e", "Loader.load", if_test('kind == "a"'), "offset = 0"), before)
    assert info.value.line == 8 and "other code" in info.value.found


def test_anchor_matches_by_meaning_not_formatting():
    reformatted = src(LOADER).replace('if kind == "a":', "if (kind  ==  'a'):  # note")
    got, changed = run(
        AddElse("e", "Loader.load", if_test('kind == "a"'), "offset = 0"), reformatted
    )
    assert changed and "if (kind  ==  'a'):  # note" in got


def test_missing_method_reports_the_class_line_and_what_is_there():
    renamed = src(LOADER).replace("def load", "def load_renamed")
    with pytest.raises(Conflict) as info:
        run(AddElse("e", "Loader.load", if_test('kind == "a"'), "offset = 0"), renamed)
    conflict = info.value
    assert conflict.line == 1
    assert "load_renamed" in conflict.found and "'load'" in conflict.expected


def test_missing_anchor_reports_the_scope_line():
    with pytest.raises(Conflict) as info:
        run(
            AddElse("e", "Loader.load", if_test("nothing.like(this)"), "x = 0"),
            src(LOADER),
        )
    assert info.value.line == 2 and "nothing.like(this)" in info.value.expected
    assert "the scope starts: def load(self, kind, i):" in info.value.found


def test_insert_before_and_after_an_anchor():
    check(
        InsertStatements(
            "i", "Loader.load", "offset = 0", before=if_test('kind == "a"')
        ),
        LOADER,
        LOADER.replace(
            "        # pick the shard\n",
            "        offset = 0\n        # pick the shard\n",
        ),
    )
    check(
        InsertStatements("i", "Loader.load", "assert offset", after=stmt("offset = 2")),
        LOADER,
        LOADER.replace("offset = 2\n", "offset = 2\n            assert offset\n"),
    )


def test_insert_a_method_at_the_end_of_a_class_and_refuse_a_different_one():
    method = """
    def size(self):
        return 1
    """
    check(
        InsertStatements("m", "Loader", method, at="end"),
        LOADER,
        LOADER + "\n    def size(self):\n        return 1\n",
    )
    clash = src(LOADER) + "\n    def size(self):\n        return 2\n"
    with pytest.raises(Conflict):
        run(InsertStatements("m", "Loader", method, at="end"), clash)


def test_insert_statements_needs_exactly_one_place():
    with pytest.raises(SeriesError, match="exactly one of after=, before=, at="):
        InsertStatements("i", "", "x = 1", before=stmt("y = 1"), at="end")


def test_ambiguous_anchor_is_a_conflict_naming_all_lines():
    before = src("""
        def f():
            x = 1
            x = 1
        """)
    with pytest.raises(Conflict) as info:
        run(InsertStatements("i", "f", "y = 2", after=stmt("x = 1")), before)
    assert "lines 2, 3" in info.value.found


def test_replace_statement():
    check(
        ReplaceStatement(
            "r", "Loader.load", stmt("return offset"), "return offset + i"
        ),
        LOADER,
        LOADER.replace("return offset", "return offset + i"),
    )


def test_set_dict_entry_adds_then_replaces():
    before = """
    TABLE = {
        "a": 1,
        "b": 2,
    }
    """
    check(
        SetDictEntry("d", "", assign("TABLE"), '"c"', "3"),
        before,
        """
        TABLE = {
            "a": 1,
            "b": 2,
            "c": 3,
        }
        """,
    )
    check(
        SetDictEntry("d", "", assign("TABLE"), '"a"', "7"),
        before,
        before.replace('"a": 1', '"a": 7'),
    )


def test_set_dict_entry_on_a_non_dict_is_a_conflict():
    with pytest.raises(Conflict):
        run(SetDictEntry("d", "", assign("TABLE"), '"a"', "1"), "TABLE = [1]\n")


def test_add_import_once():
    before = """
    \"\"\"Doc.\"\"\"
    import os
    from a.b import c

    x = 1
    """
    check(
        AddImport("imp", "a.b", ("d",)),
        before,
        before.replace("from a.b import c", "from a.b import c, d"),
    )
    check(
        AddImport("imp", "e.f", ("g",)),
        before,
        before.replace(
            "from a.b import c\n", "from a.b import c\n    from e.f import g\n"
        ),
    )
    check(
        AddImport("imp", "sys"),
        before,
        before.replace("from a.b import c\n", "from a.b import c\n    import sys\n"),
    )


def test_replace_argument_by_keyword_and_position():
    before = """
    def g():
        return make(1, 2, size=3)
    """
    check(
        ReplaceArgument("a", "g", call("make"), "4", keyword="size"),
        before,
        before.replace("size=3", "size=4"),
    )
    check(
        ReplaceArgument("a", "g", call("make"), "True", keyword="strict"),
        before,
        before.replace("size=3)", "size=3, strict=True)"),
    )
    check(
        ReplaceArgument("a", "g", call("make"), "9", index=1),
        before,
        before.replace("1, 2", "1, 9"),
    )
    with pytest.raises(Conflict):
        run(ReplaceArgument("a", "g", call("make"), "9", index=5), src(before))


def test_replace_argument_keeps_the_call_layout():
    before = """
    make(
        a,
        b,
    )
    """
    check(
        ReplaceArgument("a", "", call("make"), "c", keyword="k"),
        before,
        """
        make(
            a,
            b,
            k=c,
        )
        """,
    )


def test_wrap_in_condition_with_else():
    check(
        WrapInCondition(
            "w", "Loader.load", stmt("return offset"), "i > 0", orelse="return 0"
        ),
        LOADER,
        LOADER.replace(
            "        return offset\n",
            "        if i > 0:\n            return offset\n        else:\n            return 0\n",
        ),
    )


def test_rename_name_in_scope_only():
    before = """
    from m import Old

    def f():
        from m import Old

        return Old


    def g():
        return Old
    """
    check(
        RenameName("n", "f", "Old", "New"),
        before,
        """
        from m import Old

        def f():
            from m import New

            return New


        def g():
            return Old
        """,
    )
    with pytest.raises(Conflict):
        run(RenameName("n", "f", "Gone", "New2"), src(before))


def test_scope_looks_through_if_blocks_but_defn_anchor_finds_nested():
    before = src("""
        if HAVE:
            def f():
                return 1
        """)
    got, changed = run(InsertStatements("i", "f", "x = 0", at="start"), before)
    assert changed and "        x = 0\n        return 1" in got
    got, changed = run(
        ReplaceStatement("r", "", defn("f"), "def f():\n    return 2"), before
    )
    assert changed and "return 2" in got


def test_set_dict_entry_keeps_comments_between_entries():
    """A comment line between two entries stays where it was, exactly once."""
    import libcst as _cst

    from atom_ckfree.edits import SetDictEntry as _SetDictEntry
    from atom_ckfree.edits import assign as _assign

    src = 'd = {\n    "a": 1,\n    # about b\n    "b": 2,\n}\n'
    module = _cst.parse_module(src)
    for key in ('"c"', '"e"'):
        module, changed = _SetDictEntry(
            f"t{key}", scope="", anchor=_assign("d"), key=key, value="3"
        ).apply(module)
        assert changed
    assert module.code == (
        'd = {\n    "a": 1,\n    # about b\n    "b": 2,\n    "c": 3,\n    "e": 3,\n}\n'
    )


def test_normal_form_of_expression_split_over_lines():
    """black splits a long dict value outside brackets; it still compares by AST."""
    from atom_ckfree.edits.pysyntax import normal_form as _normal_form

    split = 'lambda: os.getenv("A_LONG_NAME", "0")\n    == "1"'
    assert _normal_form(split) == _normal_form(
        'lambda: os.getenv("A_LONG_NAME", "0") == "1"'
    )


def test_missing_anchor_points_at_the_closest_statement():
    drifted = src(LOADER).replace('if kind == "a":', 'if kind == "alpha":')
    with pytest.raises(Conflict) as info:
        run(AddElse("e", "Loader.load", if_test('kind == "a"'), "offset = 0"), drifted)
    assert (
        info.value.line == 4 and 'closest is `if kind == "alpha":`' in info.value.found
    )


def test_unless_found_recognises_an_upstream_fix_in_another_form():
    upstream_fixed = src(LOADER).replace(
        "        # pick the shard\n", "        offset = -1\n"
    )
    edit = Unless(
        AddElse("e", "Loader.load", if_test('kind == "a"'), "offset = 0"),
        found("Loader.load", stmt("offset = -1")),
    )
    got, changed = run(edit, upstream_fixed)
    assert not changed and got == upstream_fixed
    got, changed = run(edit, src(LOADER))
    assert changed and "else:" in got


def test_unless_found_in_a_missing_scope_reports_the_edits_conflict():
    # found() cannot look inside a scope that is gone: the edit runs and names it.
    edit = Unless(
        AddElse("e", "Loader.load", if_test('kind == "a"'), "offset = 0"),
        found("Loader.load", stmt("offset = -1")),
    )
    with pytest.raises(Conflict) as info:
        run(edit, src(LOADER).replace("def load(", "def fetch("))
    assert info.value.edit_id == "e"


def test_comments_leading_a_payload_are_kept():
    got, _ = run(
        InsertStatements(
            "c", "Loader.load", "# why\nx = 1", before=stmt("return offset")
        ),
        src(LOADER),
    )
    assert "        # why\n        x = 1\n        return offset" in got


def test_replace_statement_keeps_the_comment_above_the_old_one():
    before = src(LOADER).replace(
        "        return offset", "        # the result\n        return offset"
    )
    got, _ = run(
        ReplaceStatement("r", "Loader.load", stmt("return offset"), "return -offset"),
        before,
    )
    assert "        # the result\n        return -offset" in got
