"""MHA without CK: Triton rope+cache, PA backend chosen on its own, Triton prefill.

Every new path is taken only in the CK-free mode (``envs.ck_free_mode()``:
``ATOM_CK_FREE=1`` or an AITER without CK) or on ``AITER_FORCE_TRITON_ATTN=1``;
otherwise the module calls the kernels it called before.
"""

from atom_ckfree.edits import (
    AddImport,
    InsertStatements,
    ReplaceStatement,
    assign,
    defn,
    if_test,
    snippet,
    stmt,
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
    ReplaceStatement(
        "attention-mha.kv-scale-buffer",
        scope="Attention.__init__",
        anchor=assign("self.kv_scale"),
        code="""
        self.register_buffer(
            "kv_scale",
            torch.tensor(self.kv_scale_float, dtype=torch.float32),
            persistent=False,
        )
        """,
    ),
    InsertStatements(
        "attention-mha.force-triton-attn",
        scope="Attention.rope_cache",
        after=stmt(
            "use_triton_attn = self.sliding_window != -1 or self.head_dim != 128"
        ),
        code="""
        if envs.AITER_FORCE_TRITON_ATTN:
            use_triton_attn = True
        """,
    ),
    InsertStatements(
        "attention-mha.ck-free-rope-cache-route",
        scope="Attention.rope_cache",
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
    InsertStatements(
        "attention-mha.ck-free-rope-cache",
        scope="Attention",
        before=defn("paged_attention_triton"),
        code=snippet(__file__, "rope_cache_ck_free.py"),
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
    InsertStatements(
        "attention-mha.ck-free-prefill",
        scope="Attention.dispatch_backend",
        after=stmt("ctx = fwd_ctx.context"),
        code="""
        if ctx.is_prefill and envs.ck_free_mode():
            return self.prefill_attention_triton
        """,
    ),
]
