# triton_kernels (the MoE kernels of fused_moe_triton.py), built as a wheel from
# the same Triton checkout so that its version matches Triton's.
RUN pip wheel --no-deps --wheel-dir /app/wheels /triton-test/python/triton_kernels && \
    pip install --no-deps /app/wheels/triton_kernels-*.whl
RUN pip show triton_kernels || true
