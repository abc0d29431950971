# By keyword: mla_decode_fwd's parameters after max_seqlen_q are page_size,
# nhead_kv, sm_scale, logit_cap (aiter/mla.py).
mla_decode_fwd(
    q,
    kv_c_and_k_pe_cache.view(-1, 1, 1, q.shape[-1]),
    o,
    paged_cu_seqlens_q,
    paged_kv_indptr,
    paged_kv_indices,
    kv_last_page_lens,
    max_q_len,
    sm_scale=self.scale,
    logit_cap=0.0,
    q_scale=self._q_scale,
    kv_scale=self._k_scale,
)
