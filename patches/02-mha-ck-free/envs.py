"""ATOM_CK_FREE and the switches of the CK-free paths; CK detected once."""

import libcst.matchers as m

from atom_ckfree.edits import (
    AddImport,
    InsertStatements,
    SetDictEntry,
    Unless,
    assign,
    found,
    matching,
    snippet,
)

SWITCHES = (
    "ATOM_CK_FREE",  # master switch of the CK-free mode (AITER built with ENABLE_CK=0)
    "ATOM_USE_TRITON_MLA_DECODE",  # MLA decode through AITER's Triton kernel
    "ATOM_USE_FLYDSL_MOE",  # MoE through FlyDSL when CK MoE is unavailable
    "AITER_FORCE_TRITON_ATTN",  # MHA decode always through Triton paged attention
)

# Switches upstream added itself, under its own names: where theirs is there,
# ours would be a second name for it (and the CK-free mode selects upstream's
# TritonMLABackend instead of a Triton decode route of ours: series 3).
UPSTREAM_NAMES = {
    "AITER_FORCE_TRITON_ATTN": "ATOM_FORCE_ATTN_TRITON",
    "ATOM_USE_TRITON_MLA_DECODE": "ATOM_USE_TRITON_MLA",
}


def switch(name: str):
    edit = SetDictEntry(
        f"envs.{name.lower().replace('_', '-')}",
        scope="",
        anchor=assign("environment_variables"),
        key=f'"{name}"',
        value=f'lambda: os.getenv("{name}", "0") == "1"',
    )
    if name not in UPSTREAM_NAMES:
        return edit
    theirs = matching(
        m.DictElement(key=m.SimpleString(f'"{UPSTREAM_NAMES[name]}"')),
        f"the switch {UPSTREAM_NAMES[name]}",
    )
    return Unless(edit, found("", theirs))


EDITS = [
    AddImport("envs.import-functools", "functools"),
    AddImport("envs.import-importlib-util", "importlib.util"),
    *(switch(name) for name in SWITCHES),
    InsertStatements(
        "envs.ck-detection",
        scope="",
        at="end",
        code=snippet(__file__, "ck_detection.py"),
    ),
]
