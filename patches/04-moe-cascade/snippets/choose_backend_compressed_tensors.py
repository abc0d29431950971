self.moe_backend = select_fp8_moe_backend(
    type(self).__name__,
    fp8_moe_flydsl_unsupported(
        self.quant_type, self.block_quant, not self.static_input_scales
    ),
)
