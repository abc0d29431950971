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

from atom_ckfree.edits import AddImport, InsertStatements, defn, snippet, stmt

EDITS = [
    AddImport("aiter-mla.import-envs", "atom.utils", ("envs",)),
    AddImport(
        "aiter-mla.import-ck-free-helpers",
        "atom.model_ops.ck_free_mla",
        (
            "block_table_slots",
            "fill_block_tables",
            "paged_kv_indices",
            "paged_kv_indptr",
        ),
    ),
    InsertStatements(
        "aiter-mla.prefill-paged-kv-method",
        scope="AiterMLAMetadataBuilder",
        before=defn("prepare_decode"),
        code=snippet(__file__, "prepare_prefill_paged_kv.py"),
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
