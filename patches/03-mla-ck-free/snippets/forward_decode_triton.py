def _forward_decode_triton(self, q, kv_buffer, paged_kv_indptr, paged_kv_indices):
    """Decode (one query token per sequence) through AITER's Triton MLA kernel."""
    B = q.shape[0]
    num_kv_splits = 16
    o = torch.empty(
        B, self.num_heads, self.kv_lora_rank, dtype=self.dtype, device=q.device
    )
    # The kernel has no FP8 path: an FP8 query and the FP8 cache rows the batch
    # reads go to it dequantised, in the model dtype (ck_free_mla).
    k_buffer, kv_indices = dequantised_kv_rows(
        kv_buffer.reshape(-1, 1, q.shape[-1]),
        paged_kv_indices,
        self._k_scale,
        self.dtype,
    )
    attn_logits = torch.empty(
        B,
        self.num_heads,
        num_kv_splits,
        self.kv_lora_rank + 1,
        dtype=torch.float32,
        device=q.device,
    )
    triton_mla_decode_kernel()(
        dequantised(q, self._q_scale, self.dtype),
        k_buffer,
        k_buffer[..., : self.kv_lora_rank],
        o,
        paged_kv_indptr,
        kv_indices,
        None,
        self.kv_lora_rank,
        self.qk_rope_head_dim,
        None,
        None,
        attn_logits,
        num_kv_splits,
        self.scale,
        logit_cap=0.0,
        use_rope=False,
        is_neox_style=False,
    )
    return self._v_up_proj_and_o_proj(o)
