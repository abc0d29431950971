"""MLA backend without CK: the paged KV metadata of a prefill batch.

In the CK-free mode (``envs.ck_free_mode()``) ``prepare_prefill`` also gives the
prefill the paged view of its KV cache that the paged MLA paths
(``mla_prefill_fwd`` / ``mla_decode_fwd`` in ``_forward_prefill_mla``) and the
Triton MLA decode read: ``block_tables`` on the device, ``kv_indptr`` (one page
per token: the MLA cache has block size 1), ``kv_indices`` and
``kv_last_page_lens``. Built with tensor operations on the device, without a loop
over sequences and without host syncs. With the flag off and CK present the
builder is upstream's.
"""

from atom_ckfree.edits import AddImport, InsertStatements, defn, stmt

HELPERS = '''
def block_table_slots(
    block_tables: torch.Tensor, context_lens: torch.Tensor, ratio: int
) -> torch.Tensor:
    """Block tables of ``ratio``-token blocks as tables of single-token slots.

    Row b, column t is ``block_tables[b, t // ratio] * ratio + t % ratio`` for
    ``t < context_lens[b]`` and -1 past the end of the sequence (the layout of
    ``block_table_convert_triton``). Shape ``[B, W * ratio]``."""
    width = block_tables.shape[1] * ratio
    t = torch.arange(width, device=block_tables.device)
    slots = block_tables.index_select(1, t // ratio) * ratio + (t % ratio).to(
        block_tables.dtype
    )
    valid = t.unsqueeze(0) < context_lens.unsqueeze(1)
    return torch.where(valid, slots, torch.full_like(slots, -1))


def paged_kv_indptr(context_lens: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[: B + 1] = [0, cumsum(context_lens)]`` (pages of one token)."""
    bs = context_lens.shape[0]
    out[0] = 0
    torch.cumsum(context_lens, 0, out=out[1 : bs + 1])
    return out[: bs + 1]


def paged_kv_indices(
    slot_tables: torch.Tensor,
    kv_indptr: torch.Tensor,
    total: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out[:total]``: the slots of all sequences, one after the other.

    Entry p belongs to sequence b with ``kv_indptr[b] <= p < kv_indptr[b + 1]``
    and is ``slot_tables[b, p - kv_indptr[b]]``. ``total`` (the sum of the
    context lengths) is a host integer, known to the builder."""
    p = torch.arange(total, device=slot_tables.device)
    seq = torch.searchsorted(kv_indptr[1:], p.to(kv_indptr.dtype), right=True)
    col = p - kv_indptr.index_select(0, seq).to(p.dtype)
    out[:total] = slot_tables[seq, col].to(out.dtype)
    return out[:total]


def fill_block_tables(dst: np.ndarray, block_tables) -> None:
    """Rows of ``dst`` = the (ragged) ``block_tables``, zero padded, in one
    scatter rather than a loop over sequences."""
    lens = np.fromiter((len(bt) for bt in block_tables), dtype=np.int64)
    bs = lens.shape[0]
    dst[:bs] = 0
    if not lens.sum():
        return
    flat = np.fromiter(
        itertools.chain.from_iterable(block_tables), dtype=dst.dtype, count=lens.sum()
    )
    rows = np.repeat(np.arange(bs), lens)
    cols = np.arange(flat.shape[0]) - np.repeat(np.cumsum(lens) - lens, lens)
    dst[rows, cols] = flat
'''

PAGED_KV = '''
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
'''

EDITS = [
    AddImport("aiter-mla.import-itertools", "itertools"),
    AddImport("aiter-mla.import-envs", "atom.utils", ("envs",)),
    InsertStatements(
        "aiter-mla.paged-kv-helpers",
        scope="",
        before=defn("AiterMLABackend"),
        code=HELPERS,
    ),
    InsertStatements(
        "aiter-mla.prefill-paged-kv-method",
        scope="AiterMLAMetadataBuilder",
        before=defn("prepare_decode"),
        code=PAGED_KV,
    ),
    InsertStatements(
        "aiter-mla.prefill-paged-kv",
        scope="AiterMLAMetadataBuilder.prepare_prefill",
        before=stmt("return attn_metadata, positions"),
        code="""
        if envs.ck_free_mode():
            self.prepare_prefill_paged_kv(batch, attn_metadata)
        """,
    ),
]
