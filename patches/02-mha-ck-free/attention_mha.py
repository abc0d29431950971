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
    stmt,
)

HELPERS = '''
def fill_per_token_kv_scale(
    scale_buffer: torch.Tensor, slot_mapping: torch.Tensor, scale: torch.Tensor
) -> None:
    """Write the per-tensor ``scale`` into the per-token scale buffer
    ``[num_blocks, num_kv_heads, block_size]`` at every slot just written, so that
    ASM paged attention dequantises what the Triton cache kernel quantised with
    one scale. On the device, no host sync; padded slots (-1) rewrite slot 0 with
    the same uniform scale."""
    block_size = scale_buffer.shape[-1]
    slots = slot_mapping.flatten().long().clamp(min=0)
    scale_buffer[slots // block_size, :, slots % block_size] = scale.to(
        device=scale_buffer.device, dtype=scale_buffer.dtype
    )


def prefill_block_table(cu_seqlens_q: torch.Tensor, max_seqlen_q: int) -> torch.Tensor:
    """Block table of the prefill's own K/V seen as a cache of block size 1: row b
    holds the token indices of sequence b. Built on ``cu_seqlens_q``'s device
    without host syncs; columns past a sequence's end repeat an in-range index."""
    starts = cu_seqlens_q[:-1].to(torch.int32).unsqueeze(1)
    offsets = torch.arange(
        max(int(max_seqlen_q), 1), dtype=torch.int32, device=cu_seqlens_q.device
    )
    last = (cu_seqlens_q[-1:].to(torch.int32) - 1).clamp(min=0)
    return torch.minimum(starts + offsets, last)
'''

CK_FREE_ROPE_CACHE = '''
def rope_cache_ck_free(
    self, q, k, v, position, fwd_ctx: ForwardContext, k_cache, v_cache, k_scale, v_scale
):
    """CK-free cache update: Triton fused RoPE + cache for every PA backend."""
    # (the Triton kernel follows the cache's layout, shuffled for ASM PA or not)
    attn_metadata = fwd_ctx.attn_metadata
    if self.q_norm is not None:
        q = self.q_norm(q)
    if self.k_norm is not None:
        k = self.k_norm(k)
    q, k, k_cache, v_cache = fused_qk_rope_reshape_and_cache(
        q,
        k,
        v,
        k_cache,
        v_cache,
        attn_metadata.slot_mapping,
        position,
        self.rotary_emb.cos_cache,
        self.rotary_emb.sin_cache,
        self.kv_scale,
        self.kv_scale,
        self.rotary_emb.is_neox_style,
        flash_layout=False,
        apply_scale=self.kv_cache_dtype.startswith("fp8"),
        offs=None,
        q_out=q,
        k_out=k,
        output_zeros=False,
    )
    if self.use_triton_attn:
        return q, k, v, k_cache, v_cache, self.kv_scale, self.kv_scale
    if self.kv_cache_dtype.startswith("fp8") and k_scale is not None:
        # ASM PA reads per-token scales: give them the one scale the cache used.
        fill_per_token_kv_scale(k_scale, attn_metadata.slot_mapping, self.kv_scale)
        fill_per_token_kv_scale(v_scale, attn_metadata.slot_mapping, self.kv_scale)
    return q, k, v, k_cache, v_cache, k_scale, v_scale
'''

EDITS = [
    AddImport("attention-mha.import-envs", "atom.utils", ("envs",)),
    InsertStatements(
        "attention-mha.helpers",
        scope="",
        before=defn("Attention"),
        code=HELPERS,
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
        code=CK_FREE_ROPE_CACHE,
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
