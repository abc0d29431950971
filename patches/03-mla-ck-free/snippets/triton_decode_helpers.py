TRITON_MLA_DECODE_MODULES = (
    "aiter.ops.triton.attention.mla_decode_rope",
    "aiter.ops.triton.mla_decode_rope",
)


@functools_cache
def triton_mla_decode_kernel():
    """AITER's ``decode_attention_fwd_grouped_rope``, from wherever this AITER keeps it."""
    for name in TRITON_MLA_DECODE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        kernel = getattr(module, "decode_attention_fwd_grouped_rope", None)
        if kernel is not None:
            return kernel
    raise ImportError(
        "Triton MLA decode needs AITER's decode_attention_fwd_grouped_rope; "
        f"none of {', '.join(TRITON_MLA_DECODE_MODULES)} provides it. "
        "Install an AITER with its Triton kernels, or unset ATOM_USE_TRITON_MLA_DECODE."
    )


def use_triton_mla_decode() -> bool:
    return envs.ATOM_USE_TRITON_MLA_DECODE or envs.ck_free_mode()
