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
