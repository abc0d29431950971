"""gfx950: the scale layout's current name, and a block_m that fits in LDS."""

from atom_ckfree.edits import InsertStatements, RenameName, stmt

EDITS = [
    RenameName(
        "fused-moe-triton.cdna4-scale-layout",
        scope="_swizzle_mxfp4",
        old="GFX950MXScaleLayout",
        new="CDNA4MXScaleLayout",
    ),
    InsertStatements(
        "fused-moe-triton.gfx950-block-m-128",
        scope="",
        after=stmt("from triton_kernels.matmul_ogs import PrecisionConfig"),
        code="""
        if get_gfx() == "gfx950":
            # MI355X: the CDNA4 default block_m=256 exceeds the 160 KB LDS.
            from triton_kernels.matmul_ogs_details.opt_flags import (
                update_opt_flags_constraints,
            )

            update_opt_flags_constraints({"block_m": 128})
        """,
    ),
]
