# SPDX-License-Identifier: Apache-2.0
"""A Triton writer of the KV cache in the layout AITER's ASM paged attention reads.

ASM paged attention (``aiter.pa_fwd_asm``) reads K as ``[num_blocks, kv_heads,
head_size // x, block_size, x]`` and V as ``[num_blocks, kv_heads, block_size // x,
head_size, x]``, ``x`` = elements per 16 bytes of the cache dtype (AITER
``csrc/py_itfs_cu/asm_pa.cu``, ``pa_fwd``). Upstream ATOM writes that layout with
``aiter.reshape_and_cache(..., asm_layout=True)``, a HIP kernel of AITER's JIT-built
``module_cache``, which the CK-free image does not carry; AITER's Triton
``fused_qk_rope_reshape_and_cache`` writes V as ``[num_blocks, kv_heads, head_size,
block_size]`` instead. This kernel writes the ASM layout, so the CK-free mode can keep
ASM paged attention.

One program per (token, kv head); tokens whose slot is negative (padding) are skipped.
Caches:

* bf16/fp16: K and V copied;
* FP8, per-tensor: ``value * (1 / scale)`` with ``k_scale``/``v_scale`` (one element
  each), as ``reshape_and_cache(kv_cache_dtype="fp8", k_scale, v_scale)``; when
  ``k_dequant_scales``/``v_dequant_scales`` are given too, the per-tensor scale is also
  written into them at every slot, which is what ASM PA dequantises with;
* FP8, per-token (no ``k_scale``): per (token, head) ``scale = amax(|row|) / fp8 max``,
  the row stored as ``row * (1 / scale)`` and the scale in ``k_dequant_scales`` /
  ``v_dequant_scales`` ``[num_blocks, kv_heads, block_size]`` float32, as
  ``reshape_and_cache_with_pertoken_quant(..., asm_layout=True)``.

No host synchronisation: the launch fits CUDA graphs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["reshape_and_cache_asm"]

_NO_QUANT, _PER_TENSOR, _PER_TOKEN = 0, 1, 2


@triton.jit
def _reshape_and_cache_asm_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    k_scale_ptr,
    v_scale_ptr,
    k_dq_ptr,
    v_dq_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    num_kv_heads,
    block_size,
    HEAD: tl.constexpr,
    HEAD_P2: tl.constexpr,
    X: tl.constexpr,
    QUANT: tl.constexpr,
    WRITE_SCALES: tl.constexpr,
    FP8_MAX: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        blk = slot // block_size
        off = slot % block_size
        d = tl.arange(0, HEAD_P2)
        live = d < HEAD
        k = tl.load(k_ptr + token * stride_kt + head * stride_kh + d, mask=live)
        v = tl.load(v_ptr + token * stride_vt + head * stride_vh + d, mask=live)
        if QUANT != 0:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            if QUANT == 1:
                ks = tl.load(k_scale_ptr)
                vs = tl.load(v_scale_ptr)
            else:
                ks = tl.div_rn(tl.max(tl.where(live, tl.abs(k), 0.0), axis=0), FP8_MAX)
                vs = tl.div_rn(tl.max(tl.where(live, tl.abs(v), 0.0), axis=0), FP8_MAX)
            # Multiply by the reciprocal, as AITER's cache kernels do, so that both
            # writers round the same way; correctly rounded divisions (a plain ``/``
            # may be approximate on the GPU).
            k = k * tl.div_rn(1.0, ks)
            v = v * tl.div_rn(1.0, vs)
            if WRITE_SCALES:
                at = (blk * num_kv_heads + head) * block_size + off
                tl.store(k_dq_ptr + at, ks)
                tl.store(v_dq_ptr + at, vs)
        # Both caches: one [HEAD * block_size] tile per (block, head).
        tile = (blk * num_kv_heads + head) * HEAD * block_size
        k_at = tile + (d // X) * (block_size * X) + off * X + d % X
        v_at = tile + (off // X) * (HEAD * X) + d * X + off % X
        tl.store(k_cache_ptr + k_at, k.to(k_cache_ptr.dtype.element_ty), mask=live)
        tl.store(v_cache_ptr + v_at, v.to(v_cache_ptr.dtype.element_ty), mask=live)


def reshape_and_cache_asm(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    k_dequant_scales: torch.Tensor | None = None,
    v_dequant_scales: torch.Tensor | None = None,
) -> None:
    """Write ``key``/``value`` ``[num_tokens, kv_heads, head_size]`` at
    ``slot_mapping`` into ``key_cache`` ``[num_blocks, kv_heads, head_size // x,
    block_size, x]`` and ``value_cache`` (contiguous, ``num_blocks * kv_heads *
    head_size * block_size`` elements: ATOM's ``[num_blocks, kv_heads, head_size,
    block_size]`` view, or the 5-D ASM shape), in ASM paged attention's layout. See the
    module docstring for the FP8 modes."""
    num_tokens, num_kv_heads, head_size = key.shape
    num_blocks, cache_heads, dx, block_size, x = key_cache.shape
    if cache_heads != num_kv_heads or dx * x != head_size:
        raise ValueError(
            f"key {tuple(key.shape)} does not fit key_cache {tuple(key_cache.shape)}"
        )
    if x != 16 // key_cache.element_size() or block_size % x:
        raise ValueError(
            f"key_cache x={x}, block_size={block_size}: ASM layout needs x = 16 bytes "
            f"of {key_cache.dtype} and block_size a multiple of x"
        )
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("the ASM layout is addressed as contiguous caches")
    if value_cache.numel() != key_cache.numel() or value_cache.dtype != key_cache.dtype:
        raise ValueError("value_cache must match key_cache in size and dtype")
    if key.stride(-1) != 1 or value.stride(-1) != 1:
        raise ValueError("key/value need a contiguous last dimension")
    fp8 = key_cache.dtype.is_floating_point and key_cache.element_size() == 1
    if not fp8:
        quant = _NO_QUANT
    elif k_scale is not None:
        quant = _PER_TENSOR
    elif k_dequant_scales is not None:
        quant = _PER_TOKEN
    else:
        raise ValueError(
            "an FP8 cache needs k_scale/v_scale or per-token scale buffers"
        )
    write_scales = quant != _NO_QUANT and k_dequant_scales is not None
    if write_scales:
        want = (num_blocks, num_kv_heads, block_size)
        for s in (k_dequant_scales, v_dequant_scales):
            if tuple(s.shape) != want or s.dtype != torch.float32:
                raise ValueError(
                    f"per-token scales must be float32 {want}, got "
                    f"{tuple(s.shape)} {s.dtype}"
                )
    dummy = slot_mapping  # never read when its mode is off
    _reshape_and_cache_asm_kernel[(num_tokens, num_kv_heads)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        k_scale if quant == _PER_TENSOR else dummy,
        v_scale if quant == _PER_TENSOR else dummy,
        k_dequant_scales if write_scales else dummy,
        v_dequant_scales if write_scales else dummy,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        num_kv_heads,
        block_size,
        HEAD=head_size,
        HEAD_P2=triton.next_power_of_2(head_size),
        X=x,
        QUANT=quant,
        WRITE_SCALES=write_scales,
        FP8_MAX=float(torch.finfo(key_cache.dtype).max) if fp8 else 1.0,
        num_warps=1 if head_size <= 64 else 2,
    )
