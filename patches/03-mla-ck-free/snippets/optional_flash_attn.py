try:
    from aiter import flash_attn_varlen_func
except ImportError:  # an AITER built without CK
    flash_attn_varlen_func = None
