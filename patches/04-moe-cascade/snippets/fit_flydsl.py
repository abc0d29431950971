self.moe_backend = fp8_moe_fit_flydsl(
    type(self).__name__,
    self.moe_backend,
    hidden_size=hidden_size,
    intermediate_size=intermediate_size_per_partition,
    num_experts=num_experts,
    w13_scale_shape=tuple(w13_weight_scale.shape),
    w2_scale_shape=tuple(w2_weight_scale.shape),
    fp8_dtype=self.quant_dtype,
)
