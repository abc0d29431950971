"""Per-token and per-1x32 weight scales get their shard rows from output_sizes."""

from atom_ckfree.edits import AddElse, if_test

EDITS = [
    AddElse(
        "linear.merged-replicated-scale-shard-else",
        scope="MergedReplicatedLinear.weight_loader",
        head=if_test("self.quant_type == QuantType.per_1x128"),
        code="""
        # per_Token and per_1x32 scales hold one row per output feature.
        shard_offset = sum(self.output_sizes[:loaded_shard_id])
        shard_size = self.output_sizes[loaded_shard_id]
        """,
    ),
]
