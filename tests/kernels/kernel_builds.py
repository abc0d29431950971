"""Builds of the Triton MoE kernels for Hopper (sm_90), without a GPU.

Run as a script (``python kernel_builds.py``): compiles every variant of BUILDS
with Triton's own toolchain (bundled ptxas) for an sm_90 target and prints a JSON
object ``{variant: null or the error}``. It runs in a process of its own because
the Triton interpreter, once used in a process (the CPU tests), leaves
``triton.language`` patched and real compilation there fails.
"""

from __future__ import annotations

import json
import os
import sys

FP8 = {"FP8_MAX": 448.0, "FP8_TINY": 2.0**-6, "EXACT_ROUND": False}
GEMM = {**FP8, "UPCAST": False, "SBN": 128, "SBK": 128, "BLOCK_K": 128}
# GEMM2 with pointer loads, one program per tile (no tensor descriptors).
GEMM2_POINTERS = {
    **GEMM,
    "TMA": False,
    "PERSISTENT": False,
    "a_desc": None,
    "w_desc": None,
}
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
INT_PTRS = {
    "ids_ptr": "i32",
    "ws_ptr": "i32",
    "post_pad_ptr": "i32",
    "sorted_ptr": "i32",
    "expert_ids_ptr": "i32",
    "zero_ptr": "i32",
}

# variant: (kernel, constexprs, pointer types, num_warps)
BUILDS = {
    # Block scales, FP8 x per 128 columns, one scale block per tile, FP8 output.
    "gemm1-block-scalar-scale": (
        "_moe_gemm1_kernel",
        {
            **GEMM,
            "A_QUANT": False,
            "A_GROUP": 128,
            "A_ROW": False,
            "W_SCALE": 2,
            "SCALAR_BS": True,
            "OUT_QUANT": True,
            "OUT_STATIC": False,
            "ZERO_OUT": True,
            "BLOCK_M": 64,
            "BLOCK_N": 64,
            "GROUP_M": 8,
            "SPLIT": 1,
        },
        GEMM_PTRS,
        4,
    ),
    # Small M: x quantised in the prologue, split K, bf16 output.
    "gemm1-split-k-prologue-quant": (
        "_moe_gemm1_kernel",
        {
            **GEMM,
            "A_QUANT": True,
            "A_GROUP": 128,
            "A_ROW": False,
            "W_SCALE": 2,
            "SCALAR_BS": False,
            "OUT_QUANT": False,
            "OUT_STATIC": False,
            "ZERO_OUT": False,
            "BLOCK_M": 16,
            "BLOCK_N": 32,
            "GROUP_M": 1,
            "SPLIT": 4,
        },
        {**GEMM_PTRS, "out_ptr": "bf16"},
        4,
    ),
    # Per-tensor weights, one x scale per token: no per-step scaling.
    "gemm1-per-token": (
        "_moe_gemm1_kernel",
        {
            **GEMM,
            "A_QUANT": False,
            "A_GROUP": 4096,
            "A_ROW": True,
            "W_SCALE": 0,
            "SCALAR_BS": False,
            "OUT_QUANT": True,
            "OUT_STATIC": False,
            "ZERO_OUT": True,
            "BLOCK_M": 128,
            "BLOCK_N": 128,
            "GROUP_M": 8,
            "SPLIT": 1,
        },
        GEMM_PTRS,
        8,
    ),
    "gemm2-block-atomic": (
        "_moe_gemm2_kernel",
        {
            **GEMM2_POINTERS,
            "A_QUANT": False,
            "A_GROUP": 128,
            "A_ROW": False,
            "CHAIN": False,
            "W_SCALE": 2,
            "SCALAR_BS": True,
            "REDUCE": 0,
            "BLOCK_M": 64,
            "ALIGN_M": 64,
            "BLOCK_N": 128,
            "GROUP_M": 8,
        },
        {**GEMM_PTRS, "out_ptr": "fp32"},
        4,
    ),
    "gemm2-tensor-buffer": (
        "_moe_gemm2_kernel",
        {
            **GEMM2_POINTERS,
            "A_QUANT": False,
            "A_GROUP": 128,
            "A_ROW": False,
            "CHAIN": False,
            "W_SCALE": 0,
            "SCALAR_BS": False,
            "REDUCE": 1,
            "BLOCK_M": 64,
            "ALIGN_M": 64,
            "BLOCK_N": 256,
            "GROUP_M": 8,
        },
        {**GEMM_PTRS, "out_ptr": "bf16"},
        8,
    ),
    "gemm2-channel-direct-prologue-quant": (
        "_moe_gemm2_kernel",
        {
            **GEMM2_POINTERS,
            "A_QUANT": True,
            "A_GROUP": 128,
            "A_ROW": False,
            "CHAIN": False,
            "W_SCALE": 1,
            "SCALAR_BS": False,
            "REDUCE": 2,
            "BLOCK_M": 16,
            "ALIGN_M": 16,
            "BLOCK_N": 128,
            "GROUP_M": 4,
        },
        {**GEMM_PTRS, "a_ptr": "bf16", "out_ptr": "bf16"},
        4,
    ),
    # The large-M block-FP8 GEMM2: persistent grid, operands through TMA, 64-row
    # tiles of 128-row alignment blocks.
    "gemm2-block-buffer-persistent-tma": (
        "_moe_gemm2_kernel",
        {
            **GEMM,
            "A_QUANT": False,
            "A_GROUP": 128,
            "A_ROW": False,
            "CHAIN": False,
            "W_SCALE": 2,
            "SCALAR_BS": True,
            "REDUCE": 1,
            "TMA": True,
            "PERSISTENT": True,
            "BLOCK_M": 64,
            "ALIGN_M": 128,
            "BLOCK_N": 128,
            "GROUP_M": 8,
        },
        {
            **GEMM_PTRS,
            "out_ptr": "bf16",
            "a_desc": "tensordesc<fp8e4nv[64, 128]>",
            "w_desc": "tensordesc<fp8e4nv[128, 128]>",
        },
        4,
    ),
    "align-small": (
        "_align_small_kernel",
        {"BLOCK_M": 16, "N_P2": 64, "NB_P2": 4, "CHUNK": 128, "ZERO": True},
        INT_PTRS,
        8,
    ),
    "align-count-scan": (
        "_align_count_scan_kernel",
        {"BLOCK_M": 64, "E_P2": 256, "CHUNK": 4096, "ZERO": True},
        INT_PTRS,
        16,
    ),
    "align-scatter": (
        "_align_scatter_kernel",
        {"BLOCK_M": 64, "BLOCK": 256, "LOG2_STEPS": 9},
        INT_PTRS,
        4,
    ),
    "group-quant": (
        "_group_quant_kernel",
        {**FP8, "GROUP": 128, "GROUP_P2": 128, "ROWS": 32, "STATIC": False},
        {"x_ptr": "bf16", "q_ptr": "fp8e4nv"},
        4,
    ),
    # Static activation scales: quantisation with a given scale, GEMM1 writing
    # the intermediate with one, GEMM2 scaling once after a chained K loop.
    "group-quant-static": (
        "_group_quant_kernel",
        {**FP8, "GROUP": 128, "GROUP_P2": 128, "ROWS": 32, "STATIC": True},
        {"x_ptr": "bf16", "q_ptr": "fp8e4nv"},
        4,
    ),
    "gemm1-static-out": (
        "_moe_gemm1_kernel",
        {
            **GEMM,
            "A_QUANT": False,
            "A_GROUP": 4096,
            "A_ROW": True,
            "W_SCALE": 0,
            "SCALAR_BS": False,
            "OUT_QUANT": True,
            "OUT_STATIC": True,
            "ZERO_OUT": False,
            "BLOCK_M": 128,
            "BLOCK_N": 128,
            "GROUP_M": 8,
            "SPLIT": 1,
        },
        GEMM_PTRS,
        8,
    ),
    "gemm2-tensor-static-chain-tma": (
        "_moe_gemm2_kernel",
        {
            **GEMM,
            "A_QUANT": False,
            "A_GROUP": 14336,
            "A_ROW": True,
            "CHAIN": True,
            "W_SCALE": 0,
            "SCALAR_BS": False,
            "REDUCE": 1,
            "TMA": True,
            "PERSISTENT": False,
            "BLOCK_M": 128,
            "ALIGN_M": 128,
            "BLOCK_N": 128,
            "GROUP_M": 8,
        },
        {
            **GEMM_PTRS,
            "out_ptr": "bf16",
            "a_desc": "tensordesc<fp8e4nv[128, 128]>",
            "w_desc": "tensordesc<fp8e4nv[128, 128]>",
        },
        8,
    ),
    "topk-sum": (
        "_topk_sum_kernel",
        {"C_P2": 8, "BLOCK": 1024, "EXACT_ROUND": False},
        {"buf_ptr": "bf16", "out_ptr": "bf16"},
        4,
    ),
}


SM90 = ("cuda", 90, 32)


def table_source(kernel, constexprs, pointer_types):
    """The ASTSource of ``kernel`` with ``constexprs``; the other arguments are
    int32 scalars, pointers (``*_ptr``) of ``pointer_types[name]`` (float32) or
    tensor descriptors (``*_desc``) of type ``pointer_types[name]`` (a
    constexpr ``None`` when absent)."""
    from triton.compiler import ASTSource

    missing = [
        p.name for p in kernel.params if p.is_constexpr and p.name not in constexprs
    ]
    if missing:
        raise TypeError(f"constexprs not given: {missing}")
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_desc"):
            signature[name] = pointer_types[name]
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointer_types.get(name, "fp32")
        else:
            signature[name] = "i32"
    return ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()},
    )


def build(src, target, options):
    """Compile ``src`` for ``target`` (a ``(backend, arch, warp size)`` triple,
    e.g. ``("hip", "gfx942", 64)``) with launch ``options``; returns the
    compiled kernel. The one way this project builds a kernel without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget

    return triton.compile(src, target=GPUTarget(*target), options=options)


# AMDGPU code-object metadata keys read per kernel (LLVM's AMDGPUUsage, "Code
# Object V3+ Metadata"): register counts, spills and the private segment (scratch).
AMDGPU_KEYS = {
    "vgpr": ".vgpr_count",
    "agpr": ".agpr_count",
    "sgpr": ".sgpr_count",
    "vgpr_spill": ".vgpr_spill_count",
    "sgpr_spill": ".sgpr_spill_count",
    "scratch": ".private_segment_fixed_size",
}


def resources(kernel, target) -> dict:
    """LDS / shared-memory bytes and register use of a compiled ``kernel``: on AMD
    from the AMDGPU metadata of its AMDGCN text (a YAML document), on NVIDIA from
    ``cuobjdump --dump-resource-usage`` of its cubin (REG, STACK, LOCAL)."""
    out = {"lds": kernel.metadata.shared}
    if target[0] == "hip":
        from ruamel.yaml import YAML

        asm = kernel.asm["amdgcn"]
        begin = asm.index(".amdgpu_metadata") + len(".amdgpu_metadata")
        end = asm.index(".end_amdgpu_metadata")
        doc = YAML(typ="safe").load(asm[begin:end].rstrip())
        (meta,) = doc["amdhsa.kernels"]
        out.update({k: int(meta[key]) for k, key in AMDGPU_KEYS.items()})
        return out
    import subprocess
    import tempfile

    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "--dump-resource-usage", cubin.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    fields = dict(
        item.split(":", 1)
        for line in usage.splitlines()
        if "REG:" in line
        for item in line.split()
    )
    out.update(
        regs=int(fields["REG"]), stack=int(fields["STACK"]), local=int(fields["LOCAL"])
    )
    return out


def main() -> int:
    os.environ["TRITON_INTERPRET"] = "0"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from moe_reference import load_triton_moe

    tm = load_triton_moe("atom_ckfree_triton_moe_compiled", interpret=False)
    errors = {}
    for variant, (name, constexprs, pointer_types, warps) in BUILDS.items():
        try:
            src = table_source(getattr(tm, name), constexprs, pointer_types)
            build(src, SM90, {"num_warps": warps, "num_stages": 3})
            errors[variant] = None
        except Exception as exc:  # noqa: BLE001 - reported per variant
            errors[variant] = f"{type(exc).__name__}: {exc}"[-3000:]
    print(json.dumps(errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
