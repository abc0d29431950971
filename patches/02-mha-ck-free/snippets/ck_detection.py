@functools.cache
def aiter_has_ck() -> bool:
    """Whether the installed AITER can run its CK kernels (checked once).

    Every AITER build exports the CK entry points (``flash_attn_varlen_func``,
    ``moe_sorting_fwd``); a CK-free one (``ENABLE_CK=0``, AITER #2074) fails only
    when such a module is built or loaded. So CK is there when
    ``aiter.jit.core.ENABLE_CK`` (read from the environment at import; absent
    before #2074) allows it and AITER can build CK modules (its Composable Kernel
    sources, ``CK_DIR``, are present) or the CK attention module is prebuilt."""
    try:
        from aiter.jit import core as aiter_jit_core
    except ImportError:
        return False
    if not getattr(aiter_jit_core, "ENABLE_CK", True):
        return False
    ck_dir = getattr(aiter_jit_core, "CK_DIR", None)
    if ck_dir and os.path.isdir(ck_dir):
        return True
    try:
        return importlib.util.find_spec("aiter.jit.module_mha_varlen_fwd") is not None
    except (ImportError, ValueError):
        return False


def ck_free_mode() -> bool:
    """Take the CK-free paths: ``ATOM_CK_FREE=1``, or an AITER without CK."""
    return environment_variables["ATOM_CK_FREE"]() or not aiter_has_ck()
