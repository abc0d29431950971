"""gfx950: the scale layout's current name, and a block_m that fits in LDS.

Both fix ATOM's use of OpenAI's ``triton_kernels``; upstream stopped using that
package in this file, so at such a commit there is nothing left to fix."""

from atom_ckfree.edits import (
    InsertStatements,
    Obsolete,
    RenameName,
    imports_from,
    missing,
    stmt,
)

# Upstream 33c5464 (2026-05-07) capped the tile size on gfx950 its own way and
# 2b8828c (2026-06-12, "MoE w4 AITER Triton Kernels Integration") moved the file
# onto AITER's Triton MoE kernels: it imports nothing from triton_kernels since.
NO_TRITON_KERNELS = missing("", imports_from("triton_kernels"))
EVIDENCE = (
    "upstream 2b8828c moved fused_moe_triton.py from triton_kernels to AITER's "
    "Triton MoE kernels (moe_gemm_a8w4/a16w4/a4w4, shuffle_scale_moe)"
)

EDITS = [
    Obsolete(
        RenameName(
            "fused-moe-triton.cdna4-scale-layout",
            scope="_swizzle_mxfp4",
            old="GFX950MXScaleLayout",
            new="CDNA4MXScaleLayout",
        ),
        NO_TRITON_KERNELS,
        EVIDENCE,
    ),
    Obsolete(
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
        NO_TRITON_KERNELS,
        EVIDENCE,
    ),
]
