"""MLA without CK: batched SDPA prefill fallback, Triton MLA decode.

New paths run only in the CK-free mode (``envs.ck_free_mode()``) or, for the
Triton decode, on ``ATOM_USE_TRITON_MLA_DECODE=1``.

Where upstream has its own Triton MLA backend (``TritonMLABackend``, 77b3d1e,
whose decode dequantises an FP8 cache in the kernel), the CK-free mode selects
it (``envs.py`` of this series) and the Triton decode route here is obsolete;
upstream also passes ``sm_scale`` to ``mla_decode_fwd`` by keyword itself
(bedeb14).
"""

import libcst.matchers as m

from atom_ckfree.edits import (
    FirstOf,
    InsertStatements,
    Obsolete,
    OnlyWhere,
    ReplaceStatement,
    Unless,
    WrapInCondition,
    defn,
    found,
    matching,
    snippet,
    stmt,
)

AITER_IMPORT = """
from aiter import (
    QuantType,
    concat_and_cache_mla,
    dtypes,
    flash_attn_varlen_func,
    fused_qk_rope_concat_and_cache_mla,
    get_hip_quant,
)
"""

SELF_SCALE = m.Attribute(value=m.Name("self"), attr=m.Name("scale"))

# upstream's Triton MLA decode: `elif hasattr(attn_metadata, "triton_block_table"):`
UPSTREAM_TRITON_DECODE = matching(
    m.Call(
        func=m.Name("hasattr"),
        args=[
            m.Arg(m.Name("attn_metadata")),
            m.Arg(m.SimpleString('"triton_block_table"')),
        ],
    ),
    "upstream's TritonMLABackend decode branch",
)
HAS_TRITON_BACKEND = found("MLAAttention._forward_decode", UPSTREAM_TRITON_DECODE)
# upstream's own fix (bedeb14): `mla_decode_fwd(..., sm_scale=self.scale, ...)`
SCALE_BY_KEYWORD = matching(
    m.Call(
        func=m.Name("mla_decode_fwd"),
        args=[
            m.ZeroOrMore(),
            m.Arg(value=SELF_SCALE, keyword=m.Name("sm_scale")),
            m.ZeroOrMore(),
        ],
    ),
    "`mla_decode_fwd(..., sm_scale=self.scale, ...)`",
)
TRITON_BACKEND = (
    "upstream 77b3d1e (2026-05-09) decodes through its own TritonMLABackend, "
    "which the CK-free mode selects (series envs edit)"
)


def import_ck_free_helpers(*names: str) -> InsertStatements:
    """With the module's first imports: AddImport would put it after the Triton
    imports half-way down the file."""
    return InsertStatements(
        "attention-mla.import-ck-free-helpers",
        scope="",
        after=stmt("from atom.model_ops.utils import get_and_maybe_dequant_weights"),
        code=f"from atom.model_ops.ck_free_mla import {', '.join(names)}",
    )


def unless_upstream_triton(edit):
    return Obsolete(
        edit, lambda doc: doc is not None and HAS_TRITON_BACKEND(doc), TRITON_BACKEND
    )


EDITS = [
    ReplaceStatement(
        "attention-mla.flash-attn-import-optional",
        scope="",
        anchor=stmt(AITER_IMPORT),
        code=AITER_IMPORT.replace("    flash_attn_varlen_func,\n", ""),
    ),
    unless_upstream_triton(
        InsertStatements(
            "attention-mla.import-importlib",
            scope="",
            before=stmt("import logging"),
            code="import importlib",
        )
    ),
    unless_upstream_triton(
        InsertStatements(
            "attention-mla.import-cache",
            scope="",
            before=stmt("from functools import partial as functools_partial"),
            code="from functools import cache as functools_cache",
        )
    ),
    FirstOf(
        "attention-mla.import-ck-free-helpers",
        # where upstream's Triton backend decodes, only the prefill fallback is ours
        OnlyWhere(
            import_ck_free_helpers("varlen_causal_attention"),
            HAS_TRITON_BACKEND,
            "upstream's TritonMLABackend decode",
        ),
        import_ck_free_helpers(
            "dequantised", "dequantised_kv_rows", "varlen_causal_attention"
        ),
    ),
    # After the import section, so that it does not split an import block in two;
    # in this module's namespace, which the hooks below read.
    InsertStatements(
        "attention-mla.optional-flash-attn",
        scope="",
        before=defn("is_rocm_aiter_fp4bmm_enabled"),
        code=snippet(__file__, "optional_flash_attn.py"),
    ),
    unless_upstream_triton(
        InsertStatements(
            "attention-mla.triton-decode-helpers",
            scope="",
            before=defn("is_rocm_aiter_fp4bmm_enabled"),
            code=snippet(__file__, "triton_decode_helpers.py"),
        )
    ),
    WrapInCondition(
        "attention-mla.prefill-without-flash-attn",
        scope="MLAAttention._forward_prefill_mha",
        anchor=matching(
            m.SimpleStatementLine(
                body=[m.Assign(value=m.Call(func=m.Name("flash_attn_varlen_func")))]
            ),
            "`output = flash_attn_varlen_func(...)`",
        ),
        condition="flash_attn_varlen_func is not None and not envs.ck_free_mode()",
        orelse="""
        output = varlen_causal_attention(
            q,
            k,
            v,
            attn_metadata.cu_seqlens_q,
            attn_metadata.cu_seqlens_k,
            attn_metadata.max_seqlen_q,
            attn_metadata.max_seqlen_k,
            self.scale,
        )
        """,
    ),
    unless_upstream_triton(
        InsertStatements(
            "attention-mla.triton-decode-route",
            scope="MLAAttention._forward_decode",
            before=stmt("dp_size = get_dp_group().world_size"),
            code="""
            if attn_metadata.max_seqlen_q == 1 and use_triton_mla_decode():
                return self._forward_decode_triton(
                    q, kv_buffer, paged_kv_indptr, paged_kv_indices
                )
            """,
        )
    ),
    # Upstream hands its scale to mla_decode_fwd as the 9th positional argument,
    # which is page_size there; the call without it is the applied form.
    Unless(
        ReplaceStatement(
            "attention-mla.fp8-paged-prefill-sm-scale-by-keyword",
            scope="MLAAttention._forward_prefill_mla",
            anchor=matching(
                m.SimpleStatementLine(
                    body=[
                        m.Expr(
                            value=m.Call(
                                func=m.Name("mla_decode_fwd"),
                                args=[
                                    m.ZeroOrMore(),
                                    m.Arg(value=SELF_SCALE, keyword=None),
                                    m.ZeroOrMore(),
                                ],
                            )
                        )
                    ]
                ),
                "`mla_decode_fwd(..., self.scale, ...)` (the scale positional)",
            ),
            code=snippet(__file__, "fp8_paged_prefill_call.py"),
        ),
        found("MLAAttention._forward_prefill_mla", SCALE_BY_KEYWORD),
    ),
    unless_upstream_triton(
        InsertStatements(
            "attention-mla.triton-decode",
            scope="MLAAttention",
            before=defn("forward"),
            code=snippet(__file__, "forward_decode_triton.py"),
        )
    ),
]
