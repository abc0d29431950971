if self.kv_cache_dtype.startswith("fp8") and max_q_len == 1:
    mla_decode_fwd(
        q,
        kv_c_and_k_pe_cache.view(-1, 1, 1, q.shape[-1]),
        o,
        paged_cu_seqlens_q,
        paged_kv_indptr,
        paged_kv_indices,
        kv_last_page_lens,
        max_q_len,
        self.scale,
        0.0,
        None,
        q_scale=self._q_scale,
        kv_scale=self._k_scale,
    )
else:
    # mla_decode_fwd takes FP8 scales for one query token per sequence only;
    # longer FP8 prefills go to mla_prefill_fwd in the model dtype.
    q = to_model_dtype(q, self.dtype, self._q_scale)
    kv_c_and_k_pe_cache = to_model_dtype(kv_c_and_k_pe_cache, self.dtype, self._k_scale)
    mla_prefill_fwd(
        q,
        kv_c_and_k_pe_cache.view(-1, 1, 1, q.shape[-1]),
        o,
        paged_cu_seqlens_q,
        paged_kv_indptr,
        paged_kv_indices,
        kv_last_page_lens,
        max_q_len,
        self.scale,
        0.0,
        None,
    )
