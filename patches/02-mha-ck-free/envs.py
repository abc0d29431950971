"""ATOM_CK_FREE and the switches of the CK-free paths; CK detected once."""

from atom_ckfree.edits import AddImport, InsertStatements, SetDictEntry, assign, snippet

SWITCHES = (
    "ATOM_CK_FREE",  # master switch of the CK-free mode (AITER built with ENABLE_CK=0)
    "ATOM_USE_TRITON_MLA_DECODE",  # MLA decode through AITER's Triton kernel
    "ATOM_USE_FLYDSL_MOE",  # MoE through FlyDSL when CK MoE is unavailable
    "AITER_FORCE_TRITON_ATTN",  # MHA decode always through Triton paged attention
)

EDITS = [
    AddImport("envs.import-functools", "functools"),
    AddImport("envs.import-importlib-util", "importlib.util"),
    *(
        SetDictEntry(
            f"envs.{name.lower().replace('_', '-')}",
            scope="",
            anchor=assign("environment_variables"),
            key=f'"{name}"',
            value=f'lambda: os.getenv("{name}", "0") == "1"',
        )
        for name in SWITCHES
    ),
    InsertStatements(
        "envs.ck-detection",
        scope="",
        at="end",
        code=snippet(__file__, "ck_detection.py"),
    ),
]
