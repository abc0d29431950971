def rope_cache_ck_free(
    self, q, k, v, position, fwd_ctx: ForwardContext, k_cache, v_cache, k_scale, v_scale
):
    """CK-free cache update, all Triton, in the layout the chosen paged attention
    reads: V as ``[blocks, heads, head, block]`` for Triton paged attention (what
    AITER's fused RoPE + cache kernel writes), ``[blocks, heads, block // x, head,
    x]`` for ASM paged attention (which that kernel cannot write: AITER's Triton RoPE,
    then the ASM-layout writer of ``kv_cache_asm``)."""
    attn_metadata = fwd_ctx.attn_metadata
    if self.q_norm is not None:
        q = self.q_norm(q)
    if self.k_norm is not None:
        k = self.k_norm(k)
    fp8 = self.kv_cache_dtype.startswith("fp8")
    if self.use_triton_attn:
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
            apply_scale=fp8,
            offs=None,
            q_out=q,
            k_out=k,
            output_zeros=False,
        )
        return q, k, v, k_cache, v_cache, self.kv_scale, self.kv_scale
    cos = self.rotary_emb.cos_cache
    sin = self.rotary_emb.sin_cache
    rope_cached_thd_positions_2c_fwd_inplace(
        q,
        k,
        cos.view(cos.shape[0], -1),
        sin.view(sin.shape[0], -1),
        position,
        0 if self.rotary_emb.is_neox_style else 1,
        reuse_freqs_front_part=True,
        nope_first=False,
    )
    # FP8: per-token scales, as upstream's ASM path quantises
    # (reshape_and_cache_with_pertoken_quant), into the buffers ASM PA reads.
    reshape_and_cache_asm(
        k,
        v,
        k_cache,
        v_cache,
        attn_metadata.slot_mapping,
        k_dequant_scales=k_scale if fp8 else None,
        v_dequant_scales=v_scale if fp8 else None,
    )
    return q, k, v, k_cache, v_cache, k_scale, v_scale
