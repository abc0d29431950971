"""Edits that serve the pin and main from one series: Dockerfile stages by name,
an alternative told apart by what the file holds (OnlyWhere), one edit for each
name a thing has had (FirstOf.each), an edit made moot by a removed import, and
an overlay file that upstream's own file covers."""

from __future__ import annotations

import textwrap

import pytest

from atom_ckfree.edits import (
    AddArg,
    Conflict,
    FirstOf,
    InsertStatements,
    Instruction,
    Moot,
    Obsolete,
    OnlyWhere,
    found,
    imports_from,
    missing,
    stmt,
)

from .test_first_of_and_obsolete import apply

TWO_STAGES = textwrap.dedent("""\
    ARG BASE_IMAGE="rocm/pytorch:latest"
    FROM ${BASE_IMAGE} AS other
    ARG MAX_JOBS
    RUN echo other

    FROM base AS build_aiter
    ARG MAX_JOBS
    RUN git clone $AITER_REPO /app/aiter-test && python3 setup.py develop
    """)


def test_an_arg_goes_into_the_stage_named_not_the_first_one():
    edit = AddArg(
        "x.enable-ck",
        "ENABLE_CK",
        "1",
        after=Instruction("ARG", "MAX_JOBS"),
        stage="build_aiter",
    )
    after, changed = edit.apply(TWO_STAGES)
    assert changed
    lines = after.splitlines()
    assert lines.index("ARG ENABLE_CK=1") == lines.index("FROM base AS build_aiter") + 2
    assert after.count("ENABLE_CK") == 1
    assert edit.apply(after) == (after, False)


def test_a_missing_stage_name_is_a_conflict_naming_the_stages():
    edit = AddArg("x.enable-ck", "ENABLE_CK", "1", stage="build_rccl")
    with pytest.raises(Conflict, match=r"\['other', 'build_aiter'\]"):
        edit.apply(TWO_STAGES)


def test_an_instruction_matches_in_its_named_stage_only():
    from atom_ckfree.edits.dockerfile import parse

    entries = parse(TWO_STAGES)
    named = Instruction("ARG", "MAX_JOBS", stage="build_aiter")
    assert [e.first for e in entries if named.matches(e)] == [6]


MODULE_PIN = (
    'class M:\n    def __init__(self, config):\n        self.kind = config["kind"]\n'
)
MODULE_MAIN = (
    "class M:\n    def __init__(self, config):\n        self.kind = config.kind\n"
)


def dynamic(code: str):
    return InsertStatements("m.dynamic", scope="M.__init__", at="end", code=code)


def test_only_where_tells_two_upstreams_apart_when_the_anchors_fit_both():
    edit = FirstOf(
        "m.dynamic",
        OnlyWhere(
            dynamic("self.dynamic = config.is_dynamic"),
            found("M.__init__", stmt("self.kind = config.kind")),
            "a typed config",
        ),
        dynamic('self.dynamic = config.get("is_dynamic", True)'),
    )
    pin, _ = apply(edit, MODULE_PIN)
    main, _ = apply(edit, MODULE_MAIN)
    assert 'config.get("is_dynamic", True)' in pin and "is_dynamic\n" not in pin
    assert "self.dynamic = config.is_dynamic" in main and ".get(" not in main


def test_first_of_each_makes_one_edit_for_every_name():
    edit = FirstOf.each(
        ("PagedAttentionImpl", "Attention"),
        lambda cls: InsertStatements(
            "m.flag", scope=f"{cls}.__init__", at="end", code="self.flag = True"
        ),
    )
    for name in ("PagedAttentionImpl", "Attention"):
        text = MODULE_MAIN.replace("class M", f"class {name}")
        after, changed = apply(edit, text)
        assert changed and "self.flag = True" in after
    with pytest.raises(Conflict):
        apply(edit, MODULE_MAIN)


def test_an_edit_of_a_removed_import_is_obsolete_with_its_evidence():
    edit = Obsolete(
        InsertStatements(
            "m.cap",
            scope="",
            after=stmt("from triton_kernels.matmul_ogs import PrecisionConfig"),
            code="CAP = 128",
        ),
        missing("", imports_from("triton_kernels")),
        "upstream abc moved off triton_kernels",
    )
    after, changed = apply(
        edit, "from triton_kernels.matmul_ogs import PrecisionConfig\n"
    )
    assert changed and "CAP = 128" in after
    with pytest.raises(Moot, match="upstream abc"):
        apply(edit, "import torch\nfrom aiter.ops.triton import moe\n")
    assert edit.gone(None)  # the file itself gone
