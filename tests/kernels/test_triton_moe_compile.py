"""The Triton MoE kernels compile for Hopper (sm_90), on a machine without a GPU.

The CPU tests run the kernels under the Triton interpreter, which accepts code the
compiler refuses (branches of a helper returning different types, a plain argument
used where a compile-time constant is needed). Here Triton's own toolchain (bundled
ptxas) builds each kernel in the variants the pipeline launches, for an sm_90
target: a frontend or backend error fails the test, nothing runs.
"""

from __future__ import annotations

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

try:  # tests/ is a package in this repository; also runnable as loose files
    from .moe_reference import load_triton_moe
except ImportError:
    from moe_reference import load_triton_moe

tm = load_triton_moe("atom_ckfree_triton_moe_compiled", interpret=False)

HOPPER = GPUTarget("cuda", 90, 32)
FP8 = {"FP8_MAX": 448.0, "FP8_TINY": 2.0**-6, "EXACT_ROUND": False}
# Pointer element types by argument name (the rest: float32).
GEMM_PTRS = {
    "a_ptr": "fp8e4nv",
    "w_ptr": "fp8e4nv",
    "out_ptr": "fp8e4nv",
    "sorted_ptr": "i32",
    "expert_ids_ptr": "i32",
    "post_pad_ptr": "i32",
    "cnt_ptr": "i32",
}
GEMM2_PTRS = dict(GEMM_PTRS, out_ptr="bf16")
INT_PTRS = {"ids_ptr": "i32", "ws_ptr": "i32", "post_pad_ptr": "i32"}
INT_PTRS.update(sorted_ptr="i32", expert_ids_ptr="i32", zero_ptr="i32")


def _compile(kernel, constexprs, pointer_types, num_warps=4, num_stages=3):
    """Compile ``kernel`` with ``constexprs``; other arguments are int32 scalars
    or pointers (``*_ptr``) of ``pointer_types[name]`` (default float32)."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointer_types.get(name, "fp32")
        else:
            signature[name] = "i32"
    missing = [
        p.name for p in kernel.params if p.is_constexpr and p.name not in constexprs
    ]
    assert not missing, f"constexprs not given: {missing}"
    src = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()},
    )
    return triton.compile(
        src, target=HOPPER, options={"num_warps": num_warps, "num_stages": num_stages}
    )


GEMM1 = {
    # Block scales, FP8 x per 128 columns, one scale block per tile, FP8 output.
    "block-scalar-scale": {
        "A_QUANT": False,
        "A_ROW": False,
        "W_SCALE": 2,
        "SCALAR_BS": True,
        "OUT_QUANT": True,
        "ZERO_OUT": True,
        "BLOCK_M": 64,
        "BLOCK_N": 64,
        "GROUP_M": 8,
        "SPLIT": 1,
    },
    # Small M: x quantised in the prologue, split K, bf16 output.
    "split-k-prologue-quant": {
        "A_QUANT": True,
        "A_ROW": False,
        "W_SCALE": 2,
        "SCALAR_BS": False,
        "OUT_QUANT": False,
        "ZERO_OUT": False,
        "BLOCK_M": 16,
        "BLOCK_N": 32,
        "GROUP_M": 1,
        "SPLIT": 4,
    },
    # Per-tensor weights, one x scale per token: chained products.
    "per-token-chained": {
        "A_QUANT": False,
        "A_ROW": True,
        "W_SCALE": 0,
        "SCALAR_BS": False,
        "OUT_QUANT": True,
        "ZERO_OUT": True,
        "BLOCK_M": 128,
        "BLOCK_N": 128,
        "GROUP_M": 8,
        "SPLIT": 1,
    },
}


@pytest.mark.parametrize("variant", list(GEMM1))
def test_gemm1_compiles(variant):
    consts = dict(
        FP8, UPCAST=False, A_GROUP=128, SBN=128, SBK=128, BLOCK_K=128, **GEMM1[variant]
    )
    out = "fp8e4nv" if consts["OUT_QUANT"] else "bf16"
    warps = 8 if consts["BLOCK_M"] == 128 else 4
    _compile(tm._moe_gemm1_kernel, consts, dict(GEMM_PTRS, out_ptr=out), warps)


GEMM2 = {
    "block-atomic": {"A_QUANT": False, "W_SCALE": 2, "SCALAR_BS": True, "REDUCE": 0},
    "tensor-buffer": {"A_QUANT": False, "W_SCALE": 0, "SCALAR_BS": False, "REDUCE": 1},
    "channel-direct-prologue-quant": {
        "A_QUANT": True,
        "W_SCALE": 1,
        "SCALAR_BS": False,
        "REDUCE": 2,
    },
}


@pytest.mark.parametrize("variant", list(GEMM2))
def test_gemm2_compiles(variant):
    consts = dict(
        FP8,
        UPCAST=False,
        A_GROUP=128,
        SBN=128,
        SBK=128,
        BLOCK_M=64,
        BLOCK_N=128,
        BLOCK_K=128,
        GROUP_M=8,
        **GEMM2[variant],
    )
    _compile(tm._moe_gemm2_kernel, consts, GEMM2_PTRS)


def test_alignment_quant_and_sum_kernels_compile():
    small = {"BLOCK_M": 16, "N_P2": 64, "NB_P2": 4, "CHUNK": 128, "ZERO": True}
    _compile(tm._align_small_kernel, small, INT_PTRS, num_warps=8)
    scan = {"BLOCK_M": 64, "E_P2": 256, "CHUNK": 4096, "ZERO": True}
    _compile(tm._align_count_scan_kernel, scan, INT_PTRS, num_warps=16)
    scatter = {"BLOCK_M": 64, "BLOCK": 256, "LOG2_STEPS": 9}
    _compile(tm._align_scatter_kernel, scatter, INT_PTRS)
    quant = dict(FP8, GROUP=128, GROUP_P2=128, ROWS=32)
    _compile(tm._group_quant_kernel, quant, {"x_ptr": "bf16", "q_ptr": "fp8e4nv"})
    topk = {"C_P2": 8, "BLOCK": 1024, "EXACT_ROUND": False}
    _compile(tm._topk_sum_kernel, topk, {"buf_ptr": "bf16", "out_ptr": "bf16"})
