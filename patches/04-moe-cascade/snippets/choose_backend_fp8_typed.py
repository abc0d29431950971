self.moe_backend = select_fp8_moe_backend(
    type(self).__name__,
    fp8_moe_flydsl_unsupported(
        self.quant_type, self.block_quant, self.quant_config.is_dynamic
    ),
)
if self.quant_type == QuantType.per_1x32 and self.moe_backend != MOE_BACKEND_CK:
    # MXFP8: e8m0 scales and gate/up interleaved for AITER's own MoE kernels;
    # neither FlyDSL's GEMMs nor the Triton pipeline read that layout.
    raise NotImplementedError(
        "MXFP8 (per_1x32) MoE runs on AITER's CK MoE only; "
        f"the {self.moe_backend} backend serves per_1x128, per-token and "
        "per-tensor FP8 (set ATOM_CK_FREE=0 with an AITER built with CK)"
    )
