"""MHA without CK: Triton rope+cache, PA backend chosen on its own, Triton prefill.

Every new path is taken only in the CK-free mode (``envs.ck_free_mode()``:
``ATOM_CK_FREE=1`` or an AITER without CK) or on ``AITER_FORCE_TRITON_ATTN=1``;
otherwise the module calls the kernels it called before.

Upstream renamed the class ``Attention`` to ``PagedAttentionImpl`` (each edit
finds it by either name), folded its own ``ATOM_FORCE_ATTN_TRITON`` into
``use_triton_attn``, and builds the block-size-1 prefill table in
``TritonMHAMetadataBuilder.prepare_prefill`` (AiterBackend's metadata still has
none, so the CK-free prefill makes one where it is missing).
"""

import libcst.matchers as m

from atom_ckfree.edits import (
    AddImport,
    FirstOf,
    InsertStatements,
    ReplaceStatement,
    Unless,
    assign,
    defn,
    found,
    if_test,
    matching,
    snippet,
    stmt,
)

MHA = (
    "PagedAttentionImpl",
    "Attention",
)  # upstream's name since f03f845, then the pin's


def in_mha(method: str, make):
    """One edit in ``<class>.method`` (or the class itself), whichever name the
    MHA class has here."""
    return FirstOf.each(MHA, lambda cls: make(f"{cls}.{method}".rstrip(".")))


# upstream's own switch where ours goes: `use_triton_attn = (envs.ATOM_FORCE_ATTN_TRITON or ...)`
FORCE = m.Attribute(value=m.Name("envs"), attr=m.Name("ATOM_FORCE_ATTN_TRITON"))
UPSTREAM_FORCE = matching(
    m.Assign(
        targets=[m.AssignTarget(target=m.Name("use_triton_attn"))],
        value=m.MatchIfTrue(lambda value: bool(m.findall(value, FORCE))),
    ),
    "`use_triton_attn = envs.ATOM_FORCE_ATTN_TRITON or ...`",
)

EDITS = [
    AddImport("attention-mha.import-envs", "atom.utils", ("envs",)),
    AddImport(
        "attention-mha.import-ck-free-helpers",
        "atom.model_ops.ck_free_mha",
        ("prefill_block_table",),
    ),
    AddImport(
        "attention-mha.import-asm-cache-writer",
        "atom.model_ops.kv_cache_asm",
        ("reshape_and_cache_asm",),
    ),
    AddImport(
        "attention-mha.import-triton-rope",
        "aiter.ops.triton.rope.rope",
        ("rope_cached_thd_positions_2c_fwd_inplace",),
    ),
    # The KV scale follows the module to its device (CUDA-graph capture), and a
    # module built on the CPU keeps working.
    in_mha(
        "__init__",
        lambda scope: ReplaceStatement(
            "attention-mha.kv-scale-buffer",
            scope=scope,
            anchor=assign("self.kv_scale"),
            code="""
            self.register_buffer(
                "kv_scale",
                torch.tensor(self.kv_scale_float, dtype=torch.float32),
                persistent=False,
            )
            """,
        ),
    ),
    Unless(
        in_mha(
            "rope_cache",
            lambda scope: InsertStatements(
                "attention-mha.force-triton-attn",
                scope=scope,
                after=stmt(
                    "use_triton_attn = self.sliding_window != -1 or self.head_dim != 128"
                ),
                code="""
                if envs.AITER_FORCE_TRITON_ATTN:
                    use_triton_attn = True
                """,
            ),
        ),
        found("PagedAttentionImpl.rope_cache", UPSTREAM_FORCE),
    ),
    in_mha(
        "rope_cache",
        lambda scope: InsertStatements(
            "attention-mha.ck-free-rope-cache-route",
            scope=scope,
            before=if_test(
                "self.rotary_emb is not None and self.q_norm is not None"
                " and self.k_norm is not None"
            ),
            code="""
            if self.rotary_emb is not None and envs.ck_free_mode():
                return self.rope_cache_ck_free(
                    q, k, v, position, fwd_ctx, k_cache, v_cache, k_scale, v_scale
                )
            """,
        ),
    ),
    in_mha(
        "",
        lambda scope: InsertStatements(
            "attention-mha.ck-free-rope-cache",
            scope=scope,
            before=defn("paged_attention_triton"),
            code=snippet(__file__, "rope_cache_ck_free.py"),
        ),
    ),
    FirstOf(
        "attention-mha.prefill-block-table",
        # main: the table comes with the metadata (TritonMHAMetadataBuilder), or
        # not at all (AiterBackend); make it where it is missing.
        InsertStatements(
            "attention-mha.prefill-block-table",
            scope="PagedAttentionImpl.prefill_attention_triton",
            after=stmt("attn_metadata = fwd_ctx.attn_metadata"),
            code="""
            if attn_metadata.block_tables is None:
                attn_metadata.block_tables = prefill_block_table(
                    attn_metadata.cu_seqlens_q, attn_metadata.max_seqlen_q
                )
            """,
        ),
        InsertStatements(
            "attention-mha.prefill-block-table",
            scope="Attention.prefill_attention_triton",
            after=stmt("block_tables = attn_metadata.fake_block_tables"),
            code="""
            if block_tables is None:
                block_tables = prefill_block_table(
                    attn_metadata.cu_seqlens_q, attn_metadata.max_seqlen_q
                )
            """,
        ),
    ),
    FirstOf(
        "attention-mha.ck-free-prefill",
        InsertStatements(
            "attention-mha.ck-free-prefill",
            scope="PagedAttentionImpl.dispatch_backend",
            before=if_test("fwd_ctx.context.is_prefill"),
            code="""
            if fwd_ctx.context.is_prefill and envs.ck_free_mode():
                return self.prefill_attention_triton
            """,
        ),
        InsertStatements(
            "attention-mha.ck-free-prefill",
            scope="Attention.dispatch_backend",
            after=stmt("ctx = fwd_ctx.context"),
            code="""
            if ctx.is_prefill and envs.ck_free_mode():
                return self.prefill_attention_triton
            """,
        ),
    ),
]
