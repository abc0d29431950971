self.moe_backend = select_fp8_moe_backend(
    type(self).__name__,
    fp8_moe_flydsl_unsupported(
        self.quant_type,
        self.block_quant,
        self.quant_config.get("is_dynamic", True),
    ),
)
