"""Dockerfile edit primitives on a miniature Dockerfile written for these tests."""

import pytest

from atom_ckfree.edits import (
    AddArg,
    Conflict,
    InsertInstructions,
    Instruction,
    ReplaceInstruction,
)
from atom_ckfree.edits.dockerfile import parse

DOCKERFILE = """\
ARG BASE=ubuntu:22.04
FROM $BASE

ARG JOBS
ENV A=1

# Build the library
RUN git clone https://example.invalid/lib.git /lib && \\
    cd /lib && \\
    git submodule update --init && \\
    JOBS=$JOBS make
RUN make -C /lib check || true

CMD ["/bin/bash"]
"""


def run(edits, text=DOCKERFILE):
    changed = []
    for edit in edits:
        text, c = edit.apply(text)
        changed.append(c)
    return text, changed


def test_structure_is_read_with_stages_and_joined_continuations():
    entries = parse(DOCKERFILE)
    assert [e.keyword for e in entries if e.keyword != "COMMENT"] == [
        "ARG",
        "FROM",
        "ARG",
        "ENV",
        "RUN",
        "RUN",
        "CMD",
    ]
    build = next(e for e in entries if e.keyword == "RUN")
    assert (build.first, build.last, build.stage) == (7, 10, 0)
    assert "cd /lib && git submodule" in build.value


def test_add_arg_after_the_stage_args_once():
    edit = AddArg("flag", "FLAG", "1", comment="# 1: as before")
    out, changed = run([edit])
    assert changed == [True]
    assert out == DOCKERFILE.replace(
        "ARG JOBS\n", "ARG JOBS\n# 1: as before\nARG FLAG=1\n"
    )
    assert run([edit], out) == (out, [False])
    with pytest.raises(Conflict) as err:
        run([AddArg("flag", "FLAG", "0")], out)
    assert err.value.line == 6 and "FLAG=1" in err.value.found
    with pytest.raises(Conflict):
        run([AddArg("flag", "FLAG", "1", after=Instruction("ARG", "MISSING"))])


def test_insert_instructions_after_and_before():
    after = InsertInstructions(
        "after", "RUN pip install extra\n", after=Instruction("RUN", "git clone")
    )
    out, changed = run([after])
    assert changed == [True]
    assert out == DOCKERFILE.replace(
        "    JOBS=$JOBS make\n", "    JOBS=$JOBS make\nRUN pip install extra\n"
    )
    assert run([after], out) == (out, [False])
    before = InsertInstructions(
        "before", "# first\nRUN true\n", before=Instruction("RUN", "git clone")
    )
    out, _ = run([before])
    # the anchor's own comment stays right above it
    assert out == DOCKERFILE.replace(
        "# Build the library\n", "# first\nRUN true\n# Build the library\n"
    )


def test_insert_conflicts_on_a_missing_or_ambiguous_anchor():
    with pytest.raises(Conflict) as err:
        run(
            [
                InsertInstructions(
                    "x", "RUN true\n", after=Instruction("RUN", "no such command")
                )
            ]
        )
    assert "none" in err.value.found
    with pytest.raises(Conflict) as err:
        run([InsertInstructions("x", "RUN true\n", after=Instruction("RUN", "/lib"))])
    assert "2 of them" in err.value.found and err.value.line == 12


def test_replace_instruction_keeps_every_other_byte_and_is_idempotent():
    code = """
    RUN git clone https://example.invalid/lib.git /lib && \\
        cd /lib && \\
        if [ "$FLAG" = "1" ]; then git submodule update --init; fi && \\
        JOBS=$JOBS make
    """
    edit = ReplaceInstruction(
        "lib", Instruction("RUN", "git clone https://example.invalid/lib.git"), code
    )
    out, changed = run([edit])
    assert changed == [True]
    assert out == DOCKERFILE.replace(
        "    git submodule update --init && \\\n",
        '    if [ "$FLAG" = "1" ]; then git submodule update --init; fi && \\\n',
    )
    assert run([edit], out) == (out, [False])
    with pytest.raises(Conflict):
        run([ReplaceInstruction("lib", Instruction("RUN", "svn checkout"), code)])
