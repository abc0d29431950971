def prepare_prefill_paged_kv(self, batch: ScheduledBatch, attn_metadata) -> None:
    """Paged KV metadata of a prefill batch, for the CK-free prefill paths."""
    # block_tables (model blocks; token slots in block_tables_converted when a
    # model block holds several tokens), kv_indptr, kv_indices and
    # kv_last_page_lens, where upstream left them unset. No host syncs.
    var = self.model_runner.forward_vars
    bs = batch.total_seqs_num_prefill
    total = int(sum(batch.context_lens[:bs]))
    if attn_metadata.block_tables is None:
        fill_block_tables(var["block_tables"].np, batch.block_tables[:bs])
        attn_metadata.block_tables = var["block_tables"].copy_to_gpu(bs)
    context_lens = attn_metadata.context_lens
    slots = block_table_slots(
        var["block_tables"].gpu[:bs], context_lens, self.block_ratio
    )
    if self.block_ratio > 1:
        converted = var["block_tables_converted"].gpu[:bs]
        converted[:, : slots.shape[1]] = slots
        attn_metadata.block_tables_converted = converted
    kv_indptr = paged_kv_indptr(context_lens, var["kv_indptr"].gpu)
    attn_metadata.kv_indptr = kv_indptr
    attn_metadata.kv_indices = paged_kv_indices(
        slots, kv_indptr, total, var["kv_indices"].gpu
    )
    if attn_metadata.kv_last_page_lens is None:
        attn_metadata.kv_last_page_lens = var["kv_last_page_lens"].gpu[:bs].fill_(1)
