"""ATOM_CK_FREE and the switches of the CK-free paths; CK detected once."""

from atom_ckfree.edits import AddImport, InsertStatements, SetDictEntry, assign

SWITCHES = (
    "ATOM_CK_FREE",  # master switch of the CK-free mode (AITER built with ENABLE_CK=0)
    "ATOM_USE_TRITON_MLA_DECODE",  # MLA decode through AITER's Triton kernel
    "ATOM_USE_FLYDSL_MOE",  # MoE through FlyDSL when CK MoE is unavailable
    "AITER_FORCE_TRITON_ATTN",  # MHA decode always through Triton paged attention
)

EDITS = [
    AddImport("envs.import-functools", "functools"),
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
        code='''
        @functools.cache
        def aiter_has_ck() -> bool:
            """Whether the installed AITER provides its CK kernels (checked once).

            AITER built with ``ENABLE_CK=0`` says so in ``aiter.jit.core.ENABLE_CK``;
            older builds have no such flag and always ship CK. Without the CK
            attention entry point there is no CK either."""
            try:
                import aiter
                from aiter.jit import core as aiter_jit_core
            except ImportError:
                return False
            if not getattr(aiter_jit_core, "ENABLE_CK", True):
                return False
            return hasattr(aiter, "flash_attn_varlen_func")


        def ck_free_mode() -> bool:
            """Take the CK-free paths: ``ATOM_CK_FREE=1``, or an AITER without CK."""
            return environment_variables["ATOM_CK_FREE"]() or not aiter_has_ck()
        ''',
    ),
]
