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
