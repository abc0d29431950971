# SPDX-License-Identifier: MIT
"""The fake AITER's entry points: module -> {name: implementation}.

An implementation computes what the caller uses (small torch reference results)
or is ``None`` (the call is only recorded). ``Value`` makes the attribute from
the fake: a plain attribute (types, constants, decorators) that is not recorded,
or entries of its own (``fake._entry``). Add entry points here.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import contracts


@dataclass
class Value:
    make: Callable[[Any], Any]  # (the FakeAiter) -> the attribute


def const(value):
    return Value(lambda fake: value)


FP8 = torch.float8_e4m3fnuz
DTYPES = types.SimpleNamespace(
    fp8=FP8,
    fp8_e8m0=getattr(torch, "float8_e8m0fnu", torch.uint8),
    i4x2=getattr(torch, "int4", torch.uint8),
    fp4x2=getattr(torch, "float4_e2m1fn_x2", torch.uint8),
    fp16=torch.float16,
    bf16=torch.bfloat16,
    fp32=torch.float32,
    i8=torch.int8,
    i32=torch.int32,
    u8=torch.uint8,
    d_dtypes={"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp8": FP8},
)


class QuantType(enum.IntEnum):
    No = 0
    per_Tensor = 1
    per_Token = 2
    per_1x32 = 3
    per_1x128 = 4
    per_128x128 = 5


class ActivationType(enum.IntEnum):
    No = 0
    Silu = 1
    Gelu = 2
    Swiglu = 3


def _group(world_size: int = 1):
    return types.SimpleNamespace(
        world_size=world_size,
        rank=0,
        rank_in_group=0,
        all_reduce=lambda x, **kwargs: x,
    )


def _identity_decorator(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn


# -- reference results ------------------------------------------------------


def _rope_reshape_and_cache(q, k, v, k_cache, v_cache, *args, **kwargs):
    return q, k, k_cache, v_cache


def _splits(num_seqs, num_kv_heads, *args, **kwargs):
    return 4


def _mla_metadata_info(*args, **kwargs):
    return tuple(((8,), torch.int32) for _ in range(6))


def _pa_metadata_info(*args, **kwargs):
    return tuple(((8,), torch.int32) for _ in range(6))


def _per_tensor_quant(x, scale=None, quant_dtype=FP8, **kwargs):
    fp8_max = torch.finfo(quant_dtype).max
    if scale is None:
        scale = x.abs().amax().to(torch.float32) / fp8_max
    q = (x.to(torch.float32) / scale).clamp(-fp8_max, fp8_max)
    return q.to(quant_dtype), scale


# What AITER's get_hip_quant returns for each QuantType (names as in AITER).
_HIP_QUANTS = {
    QuantType.per_Tensor: "per_tensor_quant_hip",
    QuantType.per_Token: "per_token_quant_hip",
    QuantType.per_1x32: "per_1x32_f4_quant_hip",
}


def _hip_quant(fake):
    """``aiter.get_hip_quant``, recorded; the quantiser it returns is recorded
    too (``aiter.per_tensor_quant_hip`` etc.)."""

    def quant(x, *args, quant_dtype=FP8, **kwargs):
        return x.to(quant_dtype), torch.ones(x.shape[0], 1)

    def get_hip_quant(quant_type):
        name = _HIP_QUANTS.get(quant_type, "per_group_quant_hip")
        impl = _per_tensor_quant if quant_type == QuantType.per_Tensor else quant
        return fake._entry(f"aiter.{name}", impl)

    return fake._entry("aiter.get_hip_quant", get_hip_quant)


def _fp8_bmm(x, w, w_scale, *args, transpose_bm=False, **kwargs):
    y = torch.bmm(
        x.float(),
        w.float().transpose(-1, -2) if w.shape[-1] == x.shape[-1] else w.float(),
    )
    y = y.to(torch.bfloat16)
    return y.transpose(0, 1) if transpose_bm else y


def _shuffle_weight(w, *args, **kwargs):
    return w


ENTRIES: dict[str, dict[str, Any]] = {
    "aiter": {
        "dtypes": const(DTYPES),
        "QuantType": const(QuantType),
        "ActivationType": const(ActivationType),
        "get_hip_quant": Value(_hip_quant),
        "per_tensor_quant": _per_tensor_quant,
        # MHA cache update and paged attention
        "fused_qk_norm_rope_cache_quant_shuffle": None,
        "rope_cached_positions_2c_fwd_inplace": (
            contracts.rope_cached_positions_2c_fwd_inplace
        ),
        "reshape_and_cache": contracts.reshape_and_cache,
        "reshape_and_cache_with_pertoken_quant": (
            contracts.reshape_and_cache_with_pertoken_quant
        ),
        "pa_fwd_asm": contracts.pa_fwd_asm,
        "pa_persistent_fwd": contracts.pa_persistent_fwd,
        "get_pa_metadata_info_v1": _pa_metadata_info,
        "get_pa_metadata_v1": None,
        # CK attention
        "flash_attn_varlen_func": contracts.flash_attn_varlen_func,
        "mha_varlen_fwd": None,
        # MLA
        "concat_and_cache_mla": None,
        "fused_qk_rope_concat_and_cache_mla": None,
        "get_mla_metadata_info_v1": _mla_metadata_info,
        "get_mla_metadata_v1": None,
        # GEMMs (linear.py)
        "gemm_a4w4": None,
        "gemm_a8w8": None,
        "gemm_a8w8_blockscale_bpreshuffle": None,
        "gemm_a8w8_bpreshuffle": None,
        # MoE (moe.py)
        "ck_moe_stage1": None,
        "ck_moe_stage2": None,
        "moe_sorting_fwd": contracts.moe_sorting_fwd,
    },
    "aiter.mla": {
        "mla_decode_fwd": contracts.mla_decode_fwd,
        "mla_prefill_fwd": contracts.mla_prefill_fwd,
    },
    "aiter.dist": {},
    "aiter.dist.shm_broadcast": {"MessageQueue": None},
    "aiter.dist.parallel_state": {
        "get_tp_group": const(lambda: _group()),
        "get_dp_group": const(lambda: _group()),
        "get_pp_group": const(lambda: _group()),
        "get_ep_group": const(lambda: _group()),
    },
    "aiter.jit": {},
    "aiter.jit.core": {},  # + ENABLE_CK and CK_DIR, set by the ck switch
    "aiter.jit.module_moe_sorting": {},  # CK's prebuilt MoE sorting (CK only)
    "aiter.jit.module_mha_varlen_fwd": {},  # CK's prebuilt varlen attention (CK only)
    "aiter.jit.utils": {},
    "aiter.jit.utils.chip_info": {"get_gfx": const(lambda: "gfx942")},
    "aiter.jit.utils.torch_guard": {"torch_compile_guard": const(_identity_decorator)},
    "aiter.tuned_gemm": {
        "tgemm": Value(
            lambda fake: types.SimpleNamespace(
                mm=fake._entry("aiter.tuned_gemm.tgemm.mm", None)
            )
        )
    },
    "aiter.utility": {},
    # aiter.dtypes is this module (AITER's aiter/__init__.py imports it so)
    "aiter.utility.dtypes": {k: const(v) for k, v in vars(DTYPES).items()},
    "aiter.utility.fp4_utils": {
        "e8m0_shuffle": None,
        "e8m0_to_f32": None,
        "mxfp4_to_f32": None,
    },
    "aiter.fused_moe": {"fused_moe": contracts.fused_moe},
    "aiter.fused_moe_bf16_asm": {"asm_moe": contracts.asm_moe},
    "aiter.ops": {},
    "aiter.ops.shuffle": {
        "shuffle_weight": _shuffle_weight,
        "shuffle_weight_a16w4": None,
        "shuffle_scale_a16w4": None,
    },
    "aiter.ops.triton": {},
    "aiter.ops.triton.quant": {"dynamic_mxfp4_quant": None},
    "aiter.ops.triton.fused_kv_cache": {
        "fused_qk_rope_reshape_and_cache": _rope_reshape_and_cache
    },
    "aiter.ops.triton.rope": {},
    "aiter.ops.triton.rope.rope": {
        "rope_cached_thd_positions_2c_fwd_inplace": (
            contracts.rope_cached_thd_positions_2c_fwd_inplace
        )
    },
    "aiter.ops.triton.gluon": {},
    "aiter.ops.triton.gluon.pa_decode_gluon": {"get_recommended_splits": _splits},
    "aiter.ops.triton.unified_attention": {"unified_attention": None},
    "aiter.ops.triton.batched_gemm_a8w8_a_per_token_group_prequant_w_per_batched_tensor_quant": {
        "batched_gemm_a8w8_a_per_token_group_prequant_w_per_batched_tensor_quant": _fp8_bmm
    },
    "aiter.ops.triton.attention": {},
    "aiter.ops.triton.attention.mla_decode_rope": {
        "decode_attention_fwd_grouped_rope": None
    },
}

# torch.ops.aiter.<name>
TORCH_OPS: dict[str, Any] = {"pa_decode_gluon": contracts.pa_decode_gluon}

# Entry points (and modules) that exist only in an AITER built with CK (absent
# with ck=False).
CK = {
    "aiter.flash_attn_varlen_func",
    "aiter.mha_varlen_fwd",
    "aiter.ck_moe_stage1",
    "aiter.ck_moe_stage2",
    "aiter.moe_sorting_fwd",
}

# The prebuilt CK JIT modules: a CK-free build has none of them (AITER's setup.py
# leaves the CK modules out of the prebuild when ENABLE_CK=0, _get_ck_exclude_modules
# in aiter/jit/core.py since AITER #2074), nor the Composable Kernel sources (CK_DIR)
# that would build them.
CK_MODULES = {"aiter.jit.module_moe_sorting", "aiter.jit.module_mha_varlen_fwd"}

# The CK and ASM kernels (and their weight layout) of moe.py's MoE path: none of
# these may run when a non-CK MoE backend (FlyDSL, Triton) is chosen.
CK_MOE = (
    "aiter.fused_moe.fused_moe",
    "aiter.fused_moe_bf16_asm.asm_moe",
    "aiter.moe_sorting_fwd",
    "aiter.ops.shuffle.shuffle_weight",
    "aiter.get_hip_quant",
    "torch.ops.aiter.rocm_aiter_fused_moe",
)
