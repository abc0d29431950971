# SPDX-License-Identifier: Apache-2.0
"""Portable Triton FP8 mixture-of-experts pipeline (CK-free MoE fallback).

This module carries its own Triton kernels and imports nothing but ``torch``,
``triton`` and the standard library, so it runs wherever Triton runs (ROCm and
CUDA) and can be tested on the CPU through ``TRITON_INTERPRET=1``. It needs Triton
3.3 or newer (the persistent GEMM2 flattens its tile loop); tensor descriptors
(Triton 3.4+, sm_90+) are used where a configuration asks for them and the device
and Triton have them, pointer loads otherwise.

Public entry point (called by ATOM's ``moe.py`` when the Triton backend is chosen)::

    fused_moe_fp8(hidden_states, w13, w2, topk_weights, topk_ids, *,
                  w13_scale, w2_scale, block_shape=None,
                  num_fused_shared_experts=0) -> torch.Tensor

Arguments
    hidden_states  ``[M, K]`` bfloat16 or float16 activations.
    w13            ``[E, 2N, K]`` FP8 (``float8_e4m3fn`` or ``float8_e4m3fnuz``),
                   standard row-major layout (not CK-shuffled): rows ``0..N-1``
                   are the gate projection, rows ``N..2N-1`` the up projection.
    w2             ``[E, K, N]`` FP8 of the same dtype as ``w13``.
    topk_weights   ``[M, C]`` routing weights (float32; any float dtype is read
                   as float32).
    topk_ids       ``[M, C]`` int32/int64 expert ids in ``[0, E)``. ``C`` is
                   ``top_k + num_fused_shared_experts``: shared experts that are
                   fused into the routed set appear as extra columns and are
                   treated like any other column (weight ``topk_weights[:, c]``).
    w13_scale      dequantisation scales of ``w13`` (``w = w_fp8 * scale``):
                   * per-tensor: one float32 per expert, shape ``[E]`` (or
                     ``[E, 1]``, ``[E, 1, 1]``; a single scalar is broadcast to
                     all experts), or ``[E, 2]`` = separate (gate, up) scalars;
                   * per-output-channel: ``[E, 2N]`` (optionally ``[E, 2N, 1]``);
                   * block: ``[E, ceil(2N / bn), ceil(K / bk)]`` with
                     ``block_shape=(bn, bk)``, typically ``(128, 128)``.
    w2_scale       the same for ``w2``: ``[E]`` / ``[E, K]`` /
                   ``[E, ceil(K / bn), ceil(N / bk)]``.
    block_shape    ``None`` or ``(bn, bk)``; when given both scales must be block
                   scales (``bk`` a power of two >= 16).
Returns ``[M, K]`` in ``hidden_states.dtype``:
``sum_c topk_weights[m, c] * (silu(x_m W_gate^T) * (x_m W_up^T)) W2^T`` of expert
``topk_ids[m, c]``.

Numerics: activations are quantised to FP8 per (token, group of <=128 columns)
with a float32 scale ``amax / fp8_max`` (the intermediate likewise; the input x
per token when the weights have per-tensor/channel scales, config
``x_per_token``), products
accumulate in float32, the top-k sum in float32. Relative error against a
float64 reference of the dequantised problem is dominated by the activation
quantisation (about 3-5e-2 for e4m3).

Building blocks (also public): :func:`moe_align_block_size`,
:func:`per_token_group_quant_fp8`, :func:`moe_gemm1_silu`, :func:`moe_gemm2_reduce`.
Launch configurations are data (JSON files under ``configs/triton_moe/`` beside
this module, schema :class:`MoeConfig`); :func:`select_moe_config` says which one
the pipeline takes for a device, problem and M.

Autotune on first use (opt-in): with ``ATOM_CKFREE_MOE_AUTOTUNE=1``, on a device
without its own config file for the problem class (the nearest tuned device's
file or the heuristic would be used), the first call for an M bucket
(:data:`AUTOTUNE_BUCKETS`) times at most :data:`AUTOTUNE_MAX_CANDIDATES`
configurations on its own inputs (the fallback, the heuristic, the nearest
device's configs of the neighbouring buckets, then single-knob steps of tiles,
stages and warps within the device's limits; quantisation knobs are never
varied), each in a CUDA/HIP graph timed by ``triton.testing.do_bench``, and
takes the fastest. The choice is cached per device name and Triton version in
the config files' schema under ``$ATOM_CKFREE_MOE_CACHE`` (default
``~/.cache/atom-ckfree/triton-moe/triton-<version>/``), written atomically; a
corrupt cache is ignored with a warning. Nothing is timed under the Triton
interpreter or while a graph is being captured: the fallback is used then (a
cached choice too, during capture). Off by default: the first call of each
bucket costs seconds of compilation and timing, and takes GPU memory while it
runs.

Unsupported combinations raise ``TypeError`` (dtypes) or ``ValueError`` (shapes,
scale layouts). No step synchronises with the host, so the whole pipeline can be
captured in a CUDA/HIP graph.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import tempfile
from typing import NamedTuple

import torch
import triton
import triton.language as tl

__all__ = [
    "AUTOTUNE_BUCKETS",
    "AUTOTUNE_MAX_CANDIDATES",
    "CONFIG_DIR",
    "ConfigChoice",
    "DeviceInfo",
    "MoeAlignment",
    "MoeConfig",
    "MoeConfigError",
    "MoePlan",
    "autotune_bucket",
    "autotune_cache_file",
    "autotune_enabled",
    "autotune_moe_config",
    "autotune_smem_bytes",
    "config_file_name",
    "device_info",
    "device_slug",
    "fused_moe_fp8",
    "known_device",
    "load_config_file",
    "moe_align_block_size",
    "moe_gemm1_silu",
    "moe_gemm2_reduce",
    "per_token_group_quant_fp8",
    "plan_moe_fp8",
    "select_moe_config",
    "static_quant_fp8",
    "tuned_config_file",
]

_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
_ACT_DTYPES = (torch.bfloat16, torch.float16)

# Weight-scale layouts (constexpr values of the GEMM kernels).
_SCALE_TENSOR = 0
_SCALE_CHANNEL = 1
_SCALE_BLOCK = 2

# Top-k reduction strategies of GEMM2.
_REDUCE_ATOMIC = 0  # fp32 atomic add into an [M, K] accumulator
_REDUCE_BUFFER = 1  # one row per (token, column), then a sum over the columns
_REDUCE_DIRECT = 2  # one column only: store straight into the output


def _interpreting() -> bool:
    # Whether this module's kernels were built for the Triton interpreter
    # (TRITON_INTERPRET=1 when the module was imported): decided per module
    # instance, not by the environment at call time.
    return type(_group_quant_kernel).__name__ == "InterpretedFunction"


def _fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def _fp8_tiny(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny)


# --------------------------------------------------------------------------------------
# Shared device helpers
# --------------------------------------------------------------------------------------
@triton.jit
def _round_to_fp8_grid(x, FP8_TINY: tl.constexpr, EXACT_ROUND: tl.constexpr):
    # Round-to-nearest-even of a float32 onto the e4m3 grid, done in float32 so
    # that the following cast to FP8 is exact. Only used under the Triton
    # interpreter, whose float32 -> e4m3 cast drops the carry when rounding crosses
    # a power of two (127.6 -> 64 instead of 128) and mis-rounds subnormals; the
    # hardware casts are RNE already. FP8_TINY is the smallest normal number.
    if EXACT_ROUND:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
        normal = bits.to(tl.float32, bitcast=True)
        # Subnormals: multiples of FP8_TINY / 8; RNE via the 1.5 * 2**23 trick.
        y = tl.abs(x) * (8.0 / FP8_TINY)
        sub = ((y + 12582912.0) - 12582912.0) * (FP8_TINY / 8.0)
        sub = tl.where(x < 0, -sub, sub)
        x = tl.where(tl.abs(x) < FP8_TINY, sub, normal)
    return x


@triton.jit
def _cast_out(x, dtype: tl.constexpr, EXACT_ROUND: tl.constexpr):
    # float32 -> output dtype. The interpreter truncates float32 -> bfloat16
    # instead of rounding to nearest even; round in float32 first there.
    if EXACT_ROUND and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _quant_rows(
    x, FP8_MAX: tl.constexpr, FP8_TINY: tl.constexpr, EXACT_ROUND: tl.constexpr
):
    # x: [R, G] float32 -> (values on the FP8 grid as float32, [R] float32 scales)
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.maximum(amax, 1e-10) / FP8_MAX
    q = x / scale[:, None]
    q = tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX)
    q = _round_to_fp8_grid(q, FP8_TINY, EXACT_ROUND)
    return q, scale


@triton.jit
def _quant_static(
    x, scale, FP8_MAX: tl.constexpr, FP8_TINY: tl.constexpr, EXACT_ROUND: tl.constexpr
):
    # x float32 -> values on the FP8 grid (as float32) for one given scale.
    q = tl.minimum(tl.maximum(x / scale, -FP8_MAX), FP8_MAX)
    return _round_to_fp8_grid(q, FP8_TINY, EXACT_ROUND)


@triton.jit
def _zero_range(ptr, lo, hi, numel, CHUNK: tl.constexpr):
    # Zero ptr[lo:hi) (clipped to numel) with CHUNK-wide stores.
    for zo in range(lo, hi, CHUNK):
        zr = zo + tl.arange(0, CHUNK)
        tl.store(ptr + zr, tl.zeros([CHUNK], ptr.dtype.element_ty), mask=zr < numel)


# --------------------------------------------------------------------------------------
# 1. Routing alignment
# --------------------------------------------------------------------------------------
@triton.jit
def _masked_histogram(e, m, E_P2: tl.constexpr):
    # Histogram of the ids e over E_P2 bins, lanes outside m left out. Masked lanes
    # must hold E_P2 - 1: they land in the last bin and are taken out again (no
    # histogram mask argument needed, which older Triton releases lack).
    n_masked = tl.sum((~m).to(tl.int32), axis=0)
    last = tl.arange(0, E_P2) == E_P2 - 1
    return tl.histogram(e, E_P2) - tl.where(last, n_masked, 0)


@triton.jit
def _padded_scan(counts, BLOCK_M: tl.constexpr):
    # Per-expert counts -> (segment lengths padded to BLOCK_M, starts, ends).
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    return padded, ends - padded, ends


@triton.jit
def _align_count_scan_kernel(
    ids_ptr,
    ws_ptr,
    post_pad_ptr,
    zero_ptr,
    numel,
    num_experts,
    zero_numel,
    BLOCK_M: tl.constexpr,
    E_P2: tl.constexpr,
    CHUNK: tl.constexpr,
    ZERO: tl.constexpr,
):
    # One program: histogram of expert ids, padded exclusive scan.
    # ws layout (int32): [0:E) start, [E:2E) end, [2E:3E) count, [3E:4E) cursor.
    # ZERO: also zero a small int32 buffer (as _align_small_kernel does).
    if ZERO:
        _zero_range(zero_ptr, 0, zero_numel, zero_numel, CHUNK)
    er = tl.arange(0, E_P2)
    em = er < num_experts
    counts = tl.zeros([E_P2], dtype=tl.int32)
    for start in range(0, numel, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        m = offs < numel
        e = tl.load(ids_ptr + offs, mask=m, other=E_P2 - 1).to(tl.int32)
        counts += _masked_histogram(e, m, E_P2)
    padded, starts, ends = _padded_scan(counts, BLOCK_M)
    tl.store(ws_ptr + er, starts, mask=em)
    tl.store(ws_ptr + num_experts + er, ends, mask=em)
    tl.store(ws_ptr + 2 * num_experts + er, counts, mask=em)
    tl.store(ws_ptr + 3 * num_experts + er, tl.zeros([E_P2], dtype=tl.int32), mask=em)
    tl.store(post_pad_ptr, tl.sum(padded, axis=0))


@triton.jit
def _lower_bound_end(ends_ptr, p, num_experts, LOG2_STEPS: tl.constexpr):
    # Number of experts whose padded segment ends at or before position p, i.e.
    # the expert owning p. Branch-free binary search over the sorted ends.
    lo = tl.zeros_like(p)
    hi = tl.zeros_like(p) + num_experts
    for _ in tl.static_range(LOG2_STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(ends_ptr + mid, mask=active, other=0)
        go_right = active & (v <= p)
        lo = tl.where(go_right, mid + 1, lo)
        hi = tl.where(active & (v > p), mid, hi)
    return lo


@triton.jit
def _align_scatter_kernel(
    ids_ptr,
    ws_ptr,
    post_pad_ptr,
    sorted_ptr,
    expert_ids_ptr,
    numel,
    num_experts,
    max_padded,
    max_blocks,
    BLOCK_M: tl.constexpr,
    BLOCK: tl.constexpr,
    LOG2_STEPS: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    starts_ptr = ws_ptr
    ends_ptr = ws_ptr + num_experts
    counts_ptr = ws_ptr + 2 * num_experts
    cursor_ptr = ws_ptr + 3 * num_experts
    total = tl.load(post_pad_ptr)

    # Each (token, column) entry takes the next slot of its expert's segment.
    m = offs < numel
    e = tl.load(ids_ptr + offs, mask=m, other=0).to(tl.int32)
    slot = tl.atomic_add(cursor_ptr + e, 1, mask=m)
    dst = tl.load(starts_ptr + e, mask=m, other=0) + slot
    tl.store(sorted_ptr + dst, offs.to(tl.int32), mask=m)

    # Padding slots (rank >= count inside a segment) get the sentinel numel.
    pm = (offs < max_padded) & (offs < total)
    pe = _lower_bound_end(ends_ptr, offs, num_experts, LOG2_STEPS)
    pe = tl.minimum(pe, num_experts - 1)
    rank = offs - tl.load(starts_ptr + pe, mask=pm, other=0)
    cnt = tl.load(counts_ptr + pe, mask=pm, other=0)
    tl.store(sorted_ptr + offs, tl.zeros_like(offs) + numel, mask=pm & (rank >= cnt))

    # Expert of each BLOCK_M-row block (-1 past the used range).
    bm = offs < max_blocks
    bp = offs * BLOCK_M
    be = _lower_bound_end(ends_ptr, bp, num_experts, LOG2_STEPS)
    be = tl.where(bp < total, be, -1)
    tl.store(expert_ids_ptr + offs, be, mask=bm)


@triton.jit
def _align_small_kernel(
    ids_ptr,
    sorted_ptr,
    expert_ids_ptr,
    post_pad_ptr,
    zero_ptr,
    numel,
    max_blocks,
    zero_numel,
    BLOCK_M: tl.constexpr,
    N_P2: tl.constexpr,
    NB_P2: tl.constexpr,
    CHUNK: tl.constexpr,
    ZERO: tl.constexpr,
):
    # Whole alignment in one program for small numel (one launch instead of two),
    # from pairwise comparisons of the N_P2 entries only, so its cost does not
    # grow with the number of experts: an entry's rank among the equal ids before
    # it, its expert's count, and its segment start = the padded lengths of the
    # smaller experts present (counted once, at their first entry). The first
    # entry of each expert also writes its segment's padding sentinels and block
    # experts. Entries, padding slots and blocks are disjoint: no barrier needed.
    # ZERO: also zero a small int32 buffer (the split-K GEMM1 tile counters).
    if ZERO:
        _zero_range(zero_ptr, 0, zero_numel, zero_numel, CHUNK)
    offs = tl.arange(0, N_P2)
    m = offs < numel
    e = tl.load(ids_ptr + offs, mask=m, other=0).to(tl.int32)
    same = (e[:, None] == e[None, :]) & m[None, :]
    rank = tl.sum((same & (offs[None, :] < offs[:, None])).to(tl.int32), axis=1)
    count = tl.sum(same.to(tl.int32), axis=1)
    padded = (count + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    first = m & (rank == 0)
    smaller = first[None, :] & (e[None, :] < e[:, None])
    start = tl.sum(tl.where(smaller, padded[None, :], 0), axis=1)
    total = tl.sum(tl.where(first, padded, 0), axis=0)
    tl.store(post_pad_ptr, total)
    tl.store(sorted_ptr + start + rank, offs.to(tl.int32), mask=m)

    lane = tl.arange(0, BLOCK_M)
    pad_slot = count[:, None] + lane[None, :]
    tl.store(
        sorted_ptr + start[:, None] + pad_slot,
        tl.zeros([N_P2, BLOCK_M], dtype=tl.int32) + numel,
        mask=first[:, None] & (pad_slot < padded[:, None]),
    )
    blk = tl.arange(0, NB_P2)
    tl.store(
        expert_ids_ptr + start[:, None] // BLOCK_M + blk[None, :],
        tl.zeros([N_P2, NB_P2], dtype=tl.int32) + e[:, None],
        mask=first[:, None] & (blk[None, :] < padded[:, None] // BLOCK_M),
    )
    for b0 in range(total // BLOCK_M, max_blocks, CHUNK):
        b = b0 + tl.arange(0, CHUNK)
        tl.store(
            expert_ids_ptr + b,
            tl.zeros([CHUNK], dtype=tl.int32) - 1,
            mask=b < max_blocks,
        )


class MoeAlignment(NamedTuple):
    """Result of :func:`moe_align_block_size` (all int32 device tensors).

    ``sorted_token_ids[max_padded]``: flat indices ``token * C + column`` grouped by
    expert, each expert's segment padded to a multiple of ``block_m`` with the
    sentinel ``M * C``; entries past ``num_tokens_post_padded`` are unspecified.
    ``expert_ids[max_padded // block_m]``: expert of each block, ``-1`` past the
    used range. ``num_tokens_post_padded[1]``: used length of ``sorted_token_ids``.
    """

    sorted_token_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_tokens_post_padded: torch.Tensor
    block_m: int


def _max_padded(numel: int, num_experts: int, block_m: int) -> int:
    # Upper bound of the padded length, known without looking at the ids: every
    # expert that receives tokens adds fewer than block_m padding slots.
    return triton.cdiv(numel + min(num_experts, numel) * (block_m - 1), block_m) * (
        block_m
    )


# One-program alignment up to this many entries: its pairwise comparisons grow
# with numel squared, not with the number of experts (H100, E=256: 4.4 us less
# than the two launches at numel 8; at numel 256 its [256, 256] tiles spill and
# it cost 0.25 ms more).
_ALIGN_SMALL_NUMEL = 64


def moe_align_block_size(
    topk_ids: torch.Tensor,
    block_m: int,
    num_experts: int,
    zero_buf: torch.Tensor | None = None,
) -> MoeAlignment:
    """Group (token, column) entries by expert, padded to ``block_m``, on the device.

    Small problems (``numel <= 64``): one Triton program does everything
    (entries ordered by their position inside each expert's segment). Otherwise
    two launches (histogram + scan in one program, then a scatter that also
    writes the padding sentinels and per-block expert ids; the order inside a
    segment is then unspecified, atomic slot allocation). No host
    synchronisation, buffers sized from shapes only; every entry appears exactly
    once. ``topk_ids`` must hold ids in ``[0, num_experts)``. ``zero_buf``: a
    small contiguous int32 buffer zeroed by the same launch.
    """
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if block_m < 1 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two, got {block_m}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    ids = topk_ids.reshape(-1)
    if not ids.is_contiguous():
        ids = ids.contiguous()
    numel = ids.numel()
    dev = ids.device
    max_padded = _max_padded(numel, num_experts, block_m)
    max_blocks = max_padded // block_m
    sorted_ids = torch.empty(max(max_padded, 1), dtype=torch.int32, device=dev)
    expert_ids = torch.empty(max(max_blocks, 1), dtype=torch.int32, device=dev)
    post_pad = torch.empty(1, dtype=torch.int32, device=dev)
    zero, zero_numel = (
        (post_pad, 0) if zero_buf is None else (zero_buf, zero_buf.numel())
    )
    if numel <= _ALIGN_SMALL_NUMEL:
        n_p2 = max(16, triton.next_power_of_2(max(numel, 1)))
        _align_small_kernel[(1,)](
            ids,
            sorted_ids,
            expert_ids,
            post_pad,
            zero,
            numel,
            max_blocks,
            zero_numel,
            BLOCK_M=block_m,
            N_P2=n_p2,
            NB_P2=triton.next_power_of_2(triton.cdiv(n_p2, block_m)),
            CHUNK=128,
            ZERO=zero_buf is not None,
            num_warps=8,
        )
        return MoeAlignment(sorted_ids, expert_ids, post_pad, block_m)
    ws = torch.empty(4 * num_experts, dtype=torch.int32, device=dev)
    e_p2 = triton.next_power_of_2(num_experts)
    chunk = min(4096, triton.next_power_of_2(numel))
    _align_count_scan_kernel[(1,)](
        ids,
        ws,
        post_pad,
        zero,
        numel,
        num_experts,
        zero_numel,
        BLOCK_M=block_m,
        E_P2=e_p2,
        CHUNK=chunk,
        ZERO=zero_buf is not None,
        num_warps=16 if chunk == 4096 else 4,
    )
    block = 256
    grid = (max(triton.cdiv(max(max_padded, numel), block), 1),)
    _align_scatter_kernel[grid](
        ids,
        ws,
        post_pad,
        sorted_ids,
        expert_ids,
        numel,
        num_experts,
        max_padded,
        max_blocks,
        BLOCK_M=block_m,
        BLOCK=block,
        LOG2_STEPS=max(int(num_experts).bit_length(), 1),
    )
    return MoeAlignment(sorted_ids, expert_ids, post_pad, block_m)


# --------------------------------------------------------------------------------------
# 2. Per-token-group FP8 quantisation
# --------------------------------------------------------------------------------------
@triton.jit
def _group_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    num_groups,
    groups_per_row,
    stride_xm,
    stride_qm,
    stride_sm,
    GROUP: tl.constexpr,
    GROUP_P2: tl.constexpr,
    ROWS: tl.constexpr,
    STATIC: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FP8_TINY: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
):
    # STATIC: s_ptr holds one given scale for the whole tensor (read, not written).
    pid = tl.program_id(0)
    g = pid * ROWS + tl.arange(0, ROWS)
    gm = g < num_groups
    row = g // groups_per_row
    col0 = (g % groups_per_row) * GROUP
    c = tl.arange(0, GROUP_P2)
    m = gm[:, None] & (c[None, :] < GROUP)
    x = tl.load(
        x_ptr + row[:, None].to(tl.int64) * stride_xm + col0[:, None] + c[None, :],
        mask=m,
        other=0.0,
    ).to(tl.float32)
    if STATIC:
        q = _quant_static(x, tl.load(s_ptr), FP8_MAX, FP8_TINY, EXACT_ROUND)
    else:
        q, s = _quant_rows(x, FP8_MAX, FP8_TINY, EXACT_ROUND)
        tl.store(s_ptr + row * stride_sm + g % groups_per_row, s, mask=gm)
    tl.store(
        q_ptr + row[:, None].to(tl.int64) * stride_qm + col0[:, None] + c[None, :],
        q.to(q_ptr.dtype.element_ty),
        mask=m,
    )


def per_token_group_quant_fp8(
    x: torch.Tensor,
    group_size: int = 128,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x [M, K]`` to FP8 per (row, group of ``group_size`` columns).

    Returns ``(q [M, K] fp8_dtype, scales [M, K // group_size] float32)`` with
    ``x ~= q * scale`` (``scale = amax / fp8_max``, round to nearest even,
    saturating). ``K`` must be a multiple of ``group_size``; the last dimension
    must be contiguous. One Triton launch.
    """
    x = _check_quant_input(x, group_size, fp8_dtype)
    M, K = x.shape
    s = torch.empty((M, K // group_size), dtype=torch.float32, device=x.device)
    return _group_quant(x, s, group_size, fp8_dtype, static=False), s


def static_quant_fp8(
    x: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype = torch.float8_e4m3fn
) -> torch.Tensor:
    """Quantise ``x [M, K]`` to FP8 with one given float32 ``scale`` (a
    checkpoint's static activation scale, one element): ``x ~= q * scale``,
    round to nearest even, saturating. One Triton launch, no reduction."""
    group = 128 if x.dim() == 2 and x.shape[1] % 128 == 0 else x.shape[-1]
    x = _check_quant_input(x, max(group, 1), fp8_dtype)
    return _group_quant(x, scale, max(group, 1), fp8_dtype, static=True)


def _check_quant_input(x, group_size, fp8_dtype):
    if fp8_dtype not in _FP8_DTYPES:
        raise TypeError(f"fp8_dtype must be one of {_FP8_DTYPES}, got {fp8_dtype}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"x must be bf16/fp16/fp32, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if group_size < 1 or x.shape[1] % group_size:
        raise ValueError(
            f"K={x.shape[1]} must be a positive multiple of group_size={group_size}"
        )
    if x.shape[1] and x.stride(1) != 1:
        x = x.contiguous()
    return x


def _group_quant(x, s, group_size, fp8_dtype, static):
    # One launch of _group_quant_kernel: s receives the group scales, or (static)
    # holds the one given scale.
    M, K = x.shape
    q = torch.empty((M, K), dtype=fp8_dtype, device=x.device)
    gpr = K // group_size
    num_groups = M * gpr
    if num_groups == 0:
        return q
    gp2 = triton.next_power_of_2(group_size)
    rows = max(1, min(triton.next_power_of_2(num_groups), 4096 // gp2, 64))
    _group_quant_kernel[(triton.cdiv(num_groups, rows),)](
        x,
        q,
        s,
        num_groups,
        gpr,
        x.stride(0),
        q.stride(0),
        0 if static else s.stride(0),
        GROUP=group_size,
        GROUP_P2=gp2,
        ROWS=rows,
        STATIC=static,
        **_fp8_meta(fp8_dtype),
        num_warps=4,
    )
    return q


# --------------------------------------------------------------------------------------
# 3. GEMM building blocks (shared by GEMM1 and GEMM2; inlined by Triton)
# --------------------------------------------------------------------------------------
@triton.jit
def _pid_grouped(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    if GROUP_M == 1:  # plain row-major order
        pid_m = pid // num_pid_n
        pid_n = pid % num_pid_n
    else:
        width = GROUP_M * num_pid_n
        group = pid // width
        first_m = group * GROUP_M
        size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % width) % size_m
        pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _tile_rows(
    sorted_ptr,
    expert_ids_ptr,
    pid_m,
    pid_n,
    numel,
    N,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ALIGN_M: tl.constexpr,
):
    # Expert, aligned rows (flat token * C + column indices, padding rows masked
    # out) and output columns of tile (pid_m, pid_n). BLOCK_M divides the
    # alignment's block, ALIGN_M, whose expert the tile's rows belong to.
    expert = tl.load(expert_ids_ptr + pid_m // (ALIGN_M // BLOCK_M)).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    flat = tl.load(sorted_ptr + offs_m)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return expert, offs_m, flat, flat < numel, offs_n, offs_n < N


@triton.jit
def _load_act(
    a_ptrs,
    as_row_ptrs,
    as_k_off,
    row_ok,
    k_ok,
    fp8: tl.constexpr,
    A_QUANT: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FP8_TINY: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
):
    # One K step of the activation tile: (FP8 values, [BLOCK_M] float32 scales).
    # A_QUANT: quantised here per row of the tile; else the FP8 input and its
    # per-row group scales at as_row_ptrs + as_k_off.
    a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
    if A_QUANT:
        aq, a_s = _quant_rows(a.to(tl.float32), FP8_MAX, FP8_TINY, EXACT_ROUND)
        a = aq.to(fp8)
    else:
        a_s = tl.load(as_row_ptrs + as_k_off, mask=row_ok, other=0.0)
    return a, a_s


@triton.jit
def _dot_fp8(a, b, UPCAST: tl.constexpr):
    # A fresh float32 a . b. UPCAST: the device has no native FP8 dot for this
    # dtype, use bf16.
    if UPCAST:
        a = a.to(tl.bfloat16)
        b = b.to(tl.bfloat16)
    return tl.dot(a, b)


@triton.jit
def _dot_fp8_acc(a, b, acc, UPCAST: tl.constexpr):
    # acc + a . b, accumulated by the dot itself.
    if UPCAST:
        a = a.to(tl.bfloat16)
        b = b.to(tl.bfloat16)
    return tl.dot(a, b, acc)


@triton.jit
def _block_scale_ptrs(
    ws_base, n_idx, n0, stride_wsn, SBN: tl.constexpr, SCALAR: tl.constexpr
):
    # Block-scale pointers of a tile's columns (n_idx, first column n0): one
    # scalar pointer when the whole tile lies inside one scale block.
    if SCALAR:
        ptrs = ws_base + (n0 // SBN) * stride_wsn
    else:
        ptrs = ws_base + (n_idx // SBN) * stride_wsn
    return ptrs


@triton.jit
def _scale_acc(
    acc,
    p,
    a_s,
    ws_n_ptrs,
    ws_k_off,
    n_ok,
    W_SCALE: tl.constexpr,
    SCALAR_BS: tl.constexpr,
):
    # acc += p * activation scales (* the block scales of this K step). With
    # SCALAR_BS the block scale is one number for the tile: a per-row scale
    # (BLOCK_M products) instead of a BLOCK_M x BLOCK_N outer product per step.
    if W_SCALE == 2:
        if SCALAR_BS:
            acc += p * (a_s * tl.load(ws_n_ptrs + ws_k_off))[:, None]
        else:
            bs = tl.load(ws_n_ptrs + ws_k_off, mask=n_ok)
            acc += p * (a_s[:, None] * bs[None, :])
    else:
        acc += p * a_s[:, None]
    return acc


@triton.jit
def _out_scale(acc, ws_ptr, n_idx, n_ok, stride_wsn, W_SCALE: tl.constexpr):
    # Per-tensor / per-output-channel weight scales, applied after the K loop
    # (block scales are applied per K step by _scale_acc).
    if W_SCALE == 0:
        acc = acc * tl.load(ws_ptr)
    elif W_SCALE == 1:
        acc = acc * tl.load(ws_ptr + n_idx * stride_wsn, mask=n_ok)[None, :]
    return acc


# --------------------------------------------------------------------------------------
# 4. GEMM1: x . w13^T with SiLU(gate) * up in the epilogue
# --------------------------------------------------------------------------------------
@triton.jit
def _moe_gemm1_kernel(
    a_ptr,
    a_scale_ptr,
    w_ptr,
    w_scale_ptr,
    out_ptr,
    out_scale_ptr,
    part_ptr,
    cnt_ptr,
    sorted_ptr,
    expert_ids_ptr,
    post_pad_ptr,
    N,
    K,
    numel,
    num_cols,
    num_pid_m,
    k_per_split,
    stride_ps,
    stride_am,
    stride_ak,
    stride_asm,
    stride_ask,
    stride_we,
    stride_wn,
    stride_wk,
    stride_wse,
    stride_wsn,
    stride_wsk,
    ws_up_offset,
    stride_om,
    stride_osm,
    zero_ptr,
    zero_numel,
    A_QUANT: tl.constexpr,
    A_GROUP: tl.constexpr,
    A_ROW: tl.constexpr,
    W_SCALE: tl.constexpr,
    SBN: tl.constexpr,
    SBK: tl.constexpr,
    SCALAR_BS: tl.constexpr,
    OUT_QUANT: tl.constexpr,
    OUT_STATIC: tl.constexpr,
    ZERO_OUT: tl.constexpr,
    UPCAST: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FP8_TINY: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # SPLIT > 1: the reduction over K is split (small M: weight streaming needs
    # many programs; grid axis 1, k_per_split each). Each program stores its fp32
    # partial gate/up tile to part_ptr; the last of the SPLIT programs of a tile
    # (counter cnt_ptr, zeroed by the alignment launch and reset here) sums the
    # partials and runs the SiLU * up (+ FP8 quantisation) epilogue. part_ptr,
    # cnt_ptr, k_per_split and stride_ps are unused when SPLIT == 1.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1) if SPLIT > 1 else 0
    if ZERO_OUT:
        # Zero GEMM2's fp32 top-k accumulator here (saves a memset launch): GEMM2
        # runs after this kernel has completed.
        nprog = tl.num_programs(0) * SPLIT
        chunk = tl.cdiv(tl.cdiv(zero_numel, nprog), 1024) * 1024
        z0 = (pid_k * tl.num_programs(0) + pid) * chunk
        _zero_range(zero_ptr, z0, tl.minimum(z0 + chunk, zero_numel), zero_numel, 1024)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _pid_grouped(pid, num_pid_m, num_pid_n, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(post_pad_ptr):
        return
    expert, offs_m, flat, row_ok, offs_n, n_ok = _tile_rows(
        sorted_ptr, expert_ids_ptr, pid_m, pid_n, numel, N, BLOCK_M, BLOCK_N, BLOCK_M
    )
    tok = (flat // num_cols).to(tl.int64)
    if SPLIT == 1:
        k_begin = 0
        k_end = K
    else:
        k_begin = pid_k * k_per_split
        k_end = tl.minimum(k_begin + k_per_split, K)
    k_lane = tl.arange(0, BLOCK_K)
    offs_k = k_begin + k_lane

    a_ptrs = a_ptr + tok[:, None] * stride_am + offs_k[None, :] * stride_ak
    as_rows = a_scale_ptr + tok * stride_asm
    w_base = w_ptr + expert * stride_we
    wg_ptrs = w_base + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    wu_ptrs = wg_ptrs + N * stride_wn
    ws_base = w_scale_ptr + expert * stride_wse
    n0 = pid_n * BLOCK_N
    wsg_n = _block_scale_ptrs(ws_base, offs_n, n0, stride_wsn, SBN, SCALAR_BS)
    wsu_n = _block_scale_ptrs(ws_base, offs_n + N, n0 + N, stride_wsn, SBN, SCALAR_BS)
    fp8 = w_ptr.dtype.element_ty

    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kb in range(tl.cdiv(k_end - k_begin, BLOCK_K)):
        k0 = k_begin + kb * BLOCK_K
        k_ok = k_lane < k_end - k0
        wmask = k_ok[:, None] & n_ok[None, :]
        bg = tl.load(wg_ptrs, mask=wmask, other=0.0)
        bu = tl.load(wu_ptrs, mask=wmask, other=0.0)
        if A_ROW:
            # One scale per token, applied after the loop: no per-step scaling.
            # The products are still added in float32 per K step: chained in the
            # tensor cores (sm_90 accumulates FP8 products with reduced
            # precision) the kernel error grew from 3.5e-3 to 1.2e-2 (H100).
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            acc_g += _dot_fp8(a, bg, UPCAST)
            acc_u += _dot_fp8(a, bu, UPCAST)
        else:
            a, a_s = _load_act(
                a_ptrs,
                as_rows,
                (k0 // A_GROUP) * stride_ask,
                row_ok,
                k_ok,
                fp8,
                A_QUANT,
                FP8_MAX,
                FP8_TINY,
                EXACT_ROUND,
            )
            g = _dot_fp8(a, bg, UPCAST)
            u = _dot_fp8(a, bu, UPCAST)
            ks = (k0 // SBK) * stride_wsk
            acc_g = _scale_acc(acc_g, g, a_s, wsg_n, ks, n_ok, W_SCALE, SCALAR_BS)
            acc_u = _scale_acc(acc_u, u, a_s, wsu_n, ks, n_ok, W_SCALE, SCALAR_BS)
        a_ptrs += BLOCK_K * stride_ak
        wg_ptrs += BLOCK_K * stride_wk
        wu_ptrs += BLOCK_K * stride_wk
    if A_ROW:
        row_s = tl.load(as_rows, mask=row_ok, other=0.0)
        acc_g = acc_g * row_s[:, None]
        acc_u = acc_u * row_s[:, None]

    rows64 = offs_m.to(tl.int64)
    if SPLIT > 1:
        # Partials: [SPLIT, rows, 2N] fp32, gate in [0, N), up in [N, 2N).
        p_ptrs = part_ptr + rows64[:, None] * (2 * N) + offs_n[None, :]
        pmask = n_ok[None, :] & (offs_m[:, None] >= 0)
        # int64: SPLIT * stride_ps can pass 2**31 (Mixtral, M=8192, 8 splits).
        own = p_ptrs + pid_k.to(tl.int64) * stride_ps
        tl.store(own, acc_g, mask=pmask)
        tl.store(own + N, acc_u, mask=pmask)
        tl.debug_barrier()
        tile = pid_m * num_pid_n + pid_n
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        if arrived != SPLIT - 1:
            return
        tl.debug_barrier()
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for _ in tl.static_range(SPLIT):
            acc_g += tl.load(p_ptrs, mask=pmask, other=0.0, cache_modifier=".cg")
            acc_u += tl.load(p_ptrs + N, mask=pmask, other=0.0, cache_modifier=".cg")
            p_ptrs += stride_ps
        tl.store(cnt_ptr + tile, 0)  # leave the counter zeroed

    acc_g = _out_scale(acc_g, ws_base, offs_n, n_ok, stride_wsn, W_SCALE)
    # Per-tensor scales may hold a separate up scalar ([E, 2]).
    ws_up = ws_base + ws_up_offset if W_SCALE == 0 else ws_base
    acc_u = _out_scale(acc_u, ws_up, offs_n + N, n_ok, stride_wsn, W_SCALE)
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    omask = row_ok[:, None] & n_ok[None, :]
    o_ptrs = out_ptr + rows64[:, None] * stride_om + offs_n[None, :]
    if OUT_QUANT and OUT_STATIC:
        # The checkpoint's static scale of the intermediate (one float32).
        hq = _quant_static(h, tl.load(out_scale_ptr), FP8_MAX, FP8_TINY, EXACT_ROUND)
        tl.store(o_ptrs, hq.to(out_ptr.dtype.element_ty), mask=omask)
    elif OUT_QUANT:
        hq, hs = _quant_rows(h, FP8_MAX, FP8_TINY, EXACT_ROUND)
        tl.store(o_ptrs, hq.to(out_ptr.dtype.element_ty), mask=omask)
        tl.store(out_scale_ptr + rows64 * stride_osm + pid_n, hs, mask=row_ok)
    else:
        tl.store(
            o_ptrs, _cast_out(h, out_ptr.dtype.element_ty, EXACT_ROUND), mask=omask
        )


# --------------------------------------------------------------------------------------
# 5. GEMM2: intermediate . w2^T, routing weight, top-k sum
# --------------------------------------------------------------------------------------
@triton.jit
def _gemm2_tile(
    tile,
    num_pid_m,
    num_pid_n,
    k_begin,
    k_end,
    a_ptr,
    a_scale_ptr,
    w_ptr,
    w_scale_ptr,
    out_ptr,
    topk_w_ptr,
    sorted_ptr,
    expert_ids_ptr,
    a_desc,
    w_desc,
    N,
    numel,
    num_cols,
    stride_am,
    stride_asm,
    stride_we,
    stride_wn,
    stride_wk,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_om,
    stride_twm,
    stride_twc,
    A_QUANT: tl.constexpr,
    A_GROUP: tl.constexpr,
    A_ROW: tl.constexpr,
    CHAIN: tl.constexpr,
    W_SCALE: tl.constexpr,
    SBN: tl.constexpr,
    SBK: tl.constexpr,
    SCALAR_BS: tl.constexpr,
    REDUCE: tl.constexpr,
    TMA: tl.constexpr,
    UPCAST: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FP8_TINY: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ALIGN_M: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # One output tile of GEMM2 over the reduction range [k_begin, k_end).
    # TMA: the FP8 intermediate and the weights come through tensor descriptors
    # (a_desc over h [rows, K], w_desc over w2 as [E * N, K]); else pointer loads.
    k_lane = tl.arange(0, BLOCK_K)
    fp8 = w_ptr.dtype.element_ty
    pid_m, pid_n = _pid_grouped(tile, num_pid_m, num_pid_n, GROUP_M)
    expert, offs_m, flat, row_ok, offs_n, n_ok = _tile_rows(
        sorted_ptr, expert_ids_ptr, pid_m, pid_n, numel, N, BLOCK_M, BLOCK_N, ALIGN_M
    )
    rows = offs_m.to(tl.int64)
    offs_k = k_begin + k_lane
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :]
    as_rows = a_scale_ptr + rows * stride_asm
    w_base = w_ptr + expert * stride_we
    w_ptrs = w_base + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    w_row = (expert * N + pid_n * BLOCK_N).to(tl.int32)
    ws_base = w_scale_ptr + expert * stride_wse
    ws_n = _block_scale_ptrs(
        ws_base, offs_n, pid_n * BLOCK_N, stride_wsn, SBN, SCALAR_BS
    )

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if TMA:
            # Out-of-range K columns come back zero; rows past the used
            # blocks do not occur (whole BLOCK_M blocks of h).
            a = a_desc.load([pid_m * BLOCK_M, k0])
            a_s = tl.load(as_rows + k0 // A_GROUP, mask=row_ok, other=0.0)
            b = w_desc.load([w_row, k0]).T
        else:
            k_ok = (offs_k + (k0 - k_begin)) < k_end
            a, a_s = _load_act(
                a_ptrs,
                as_rows,
                k0 // A_GROUP,
                row_ok,
                k_ok,
                fp8,
                A_QUANT,
                FP8_MAX,
                FP8_TINY,
                EXACT_ROUND,
            )
            b = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if A_ROW and CHAIN:
            # One activation scale per row, no block scales: the K steps chain
            # in the tensor cores' accumulator.
            acc = _dot_fp8_acc(a, b, acc, UPCAST)
        elif A_ROW:
            acc += _dot_fp8(a, b, UPCAST)
        else:
            p = _dot_fp8(a, b, UPCAST)
            acc = _scale_acc(
                acc, p, a_s, ws_n, (k0 // SBK) * stride_wsk, n_ok, W_SCALE, SCALAR_BS
            )
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk

    if A_ROW:
        acc = acc * tl.load(as_rows, mask=row_ok, other=0.0)[:, None]
    acc = _out_scale(acc, ws_base, offs_n, n_ok, stride_wsn, W_SCALE)
    tok = flat // num_cols
    col = flat % num_cols
    rw = tl.load(
        topk_w_ptr + tok.to(tl.int64) * stride_twm + col * stride_twc,
        mask=row_ok,
        other=0.0,
    ).to(tl.float32)
    acc = acc * rw[:, None]
    omask = row_ok[:, None] & n_ok[None, :]
    # Output row: the token (atomic top-k sum, or the only column), or the
    # (token, column) entry (buffer reduction).
    o_rows = tok
    if REDUCE == 1:
        o_rows = flat
    o_ptrs = out_ptr + o_rows.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    if REDUCE == 0:
        tl.atomic_add(o_ptrs, acc, mask=omask, sem="relaxed")
    else:
        tl.store(
            o_ptrs,
            _cast_out(acc, out_ptr.dtype.element_ty, EXACT_ROUND),
            mask=omask,
        )


@triton.jit
def _moe_gemm2_kernel(
    a_ptr,
    a_scale_ptr,
    w_ptr,
    w_scale_ptr,
    out_ptr,
    topk_w_ptr,
    sorted_ptr,
    expert_ids_ptr,
    post_pad_ptr,
    a_desc,
    w_desc,
    N,
    K,
    numel,
    num_cols,
    k_per_split,
    stride_am,
    stride_asm,
    stride_we,
    stride_wn,
    stride_wk,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_om,
    stride_twm,
    stride_twc,
    A_QUANT: tl.constexpr,
    A_GROUP: tl.constexpr,
    A_ROW: tl.constexpr,
    CHAIN: tl.constexpr,
    W_SCALE: tl.constexpr,
    SBN: tl.constexpr,
    SBK: tl.constexpr,
    SCALAR_BS: tl.constexpr,
    REDUCE: tl.constexpr,
    TMA: tl.constexpr,
    PERSISTENT: tl.constexpr,
    UPCAST: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FP8_TINY: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ALIGN_M: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Here N is the output width (hidden size) and K the reduction (intermediate).
    # One program per used tile, or with a PERSISTENT grid (a few programs per SM)
    # several tiles per program, the tile loop flattened into the K loop so that
    # the next tile's loads overlap this tile's last steps and epilogue (GEMM2's
    # reduction is short: 2-16 K steps for the block-FP8 shapes). A tile loop in
    # the one-tile grid cost up to 9 % (H100, Mixtral M=512), hence two branches.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_m = tl.load(post_pad_ptr) // BLOCK_M
    num_tiles = num_pid_m * num_pid_n
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    if PERSISTENT:
        for tile in tl.range(pid, num_tiles, tl.num_programs(0), flatten=True):
            _gemm2_tile(
                tile,
                num_pid_m,
                num_pid_n,
                k_begin,
                k_end,
                a_ptr,
                a_scale_ptr,
                w_ptr,
                w_scale_ptr,
                out_ptr,
                topk_w_ptr,
                sorted_ptr,
                expert_ids_ptr,
                a_desc,
                w_desc,
                N,
                numel,
                num_cols,
                stride_am,
                stride_asm,
                stride_we,
                stride_wn,
                stride_wk,
                stride_wse,
                stride_wsn,
                stride_wsk,
                stride_om,
                stride_twm,
                stride_twc,
                A_QUANT,
                A_GROUP,
                A_ROW,
                CHAIN,
                W_SCALE,
                SBN,
                SBK,
                SCALAR_BS,
                REDUCE,
                TMA,
                UPCAST,
                FP8_MAX,
                FP8_TINY,
                EXACT_ROUND,
                BLOCK_M,
                BLOCK_N,
                BLOCK_K,
                ALIGN_M,
                GROUP_M,
            )
    elif pid < num_tiles:
        _gemm2_tile(
            pid,
            num_pid_m,
            num_pid_n,
            k_begin,
            k_end,
            a_ptr,
            a_scale_ptr,
            w_ptr,
            w_scale_ptr,
            out_ptr,
            topk_w_ptr,
            sorted_ptr,
            expert_ids_ptr,
            a_desc,
            w_desc,
            N,
            numel,
            num_cols,
            stride_am,
            stride_asm,
            stride_we,
            stride_wn,
            stride_wk,
            stride_wse,
            stride_wsn,
            stride_wsk,
            stride_om,
            stride_twm,
            stride_twc,
            A_QUANT,
            A_GROUP,
            A_ROW,
            CHAIN,
            W_SCALE,
            SBN,
            SBK,
            SCALAR_BS,
            REDUCE,
            TMA,
            UPCAST,
            FP8_MAX,
            FP8_TINY,
            EXACT_ROUND,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            ALIGN_M,
            GROUP_M,
        )


@triton.jit
def _topk_sum_kernel(
    buf_ptr,
    out_ptr,
    K,
    num_cols,
    C_P2: tl.constexpr,
    BLOCK: tl.constexpr,
    EXACT_ROUND: tl.constexpr,
):
    # Buffer reduction's second pass: out[t] = sum_c buf[t * num_cols + c], summed
    # in float32 and cast once (one read of the buffer, one write of the output).
    tok = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    c = tl.arange(0, C_P2)
    mask = (c[:, None] < num_cols) & (cols[None, :] < K)
    rows = tok * num_cols + c
    part = tl.load(buf_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    total = tl.sum(part.to(tl.float32), axis=0)
    tl.store(
        out_ptr + tok * K + cols,
        _cast_out(total, out_ptr.dtype.element_ty, EXACT_ROUND),
        mask=cols < K,
    )


# --------------------------------------------------------------------------------------
# Launch configurations
# --------------------------------------------------------------------------------------
# Tuned configurations are data: one JSON file per (device, E, N, K, scale mode) in
# this folder, written by benchmarks/tune_moe.py, named as vLLM and AITER name
# theirs (see config_file_name). devices.json there describes each tuned device,
# so that a device without files takes those of the nearest tuned one.
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs" / "triton_moe"


class MoeConfigError(ValueError):
    """A configuration (file entry or override) that breaks the MoeConfig schema."""


_POW2_KNOBS = ("block_m", "bn1", "bk1", "w1", "bn2", "bk2", "w2", "group_m")
_COUNT_KNOBS = ("s1", "s2", "split_k1", "split_k2")
_BOOL_KNOBS = ("quant_x", "quant_h", "x_per_token", "tma2", "chain2")
_REDUCE_MODES = ("atomic", "buffer")


def _is_pow2(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and not v & (v - 1)


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """One launch configuration of the pipeline: the schema of the config files.

    block_m           rows per block (alignment and both GEMMs)
    bn1, bk1, w1, s1  GEMM1 tile N / K, num_warps, num_stages
    bn2, bk2, w2, s2  GEMM2 tile N / K, num_warps, num_stages
    split_k1          GEMM1 split over the hidden size (small M; the last program
                      of a tile to arrive runs the epilogue)
    split_k2          GEMM2 split over the intermediate (atomic reduction only)
    group_m           grouped program ordering
    quant_x           True: a separate quantisation launch for x; False: GEMM1
                      quantises x in its prologue (group = bk1)
    x_per_token       with quant_x and per-tensor/channel weight scales: one x scale
                      per token instead of per 128 columns (GEMM1 then scales once,
                      after its K loop)
    quant_h           True: GEMM1 writes the intermediate in FP8 (group = bn1);
                      False: a bf16 intermediate quantised in GEMM2's prologue
    reduce            "atomic" (fp32 atomics) or "buffer" ([M*C, K] + a sum)
    bm2               GEMM2 rows per tile, a divisor of block_m (None: block_m)
    persistent2       GEMM2 grid of this many programs per SM, each looping over
                      tiles (0: one program per tile)
    tma2              GEMM2 reads the FP8 intermediate and w2 through tensor
                      descriptors (sm_90+ with Triton's host descriptors; else
                      pointer loads)
    chain2            with one activation scale per row (static scales) and
                      per-tensor/channel weights: GEMM2 chains its K steps in the
                      tensor cores' accumulator instead of adding each in float32

    Unknown keys and values of the wrong type or range are errors
    (:class:`MoeConfigError`), not ignored.
    """

    block_m: int = 16
    bn1: int = 64
    bk1: int = 128
    w1: int = 4
    s1: int = 4
    bn2: int = 64
    bk2: int = 128
    w2: int = 4
    s2: int = 4
    split_k1: int = 1
    split_k2: int = 1
    group_m: int = 4
    quant_x: bool = False
    quant_h: bool = False
    x_per_token: bool = True
    reduce: str = "atomic"
    bm2: int | None = None
    persistent2: int = 0
    tma2: bool = False
    chain2: bool = False

    def __post_init__(self):
        for name in _POW2_KNOBS:
            if not _is_pow2(getattr(self, name)):
                raise MoeConfigError(
                    f"{name}={getattr(self, name)!r} must be a power of two"
                )
        for name in _COUNT_KNOBS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise MoeConfigError(f"{name}={v!r} must be an integer >= 1")
        for name in _BOOL_KNOBS:
            if not isinstance(getattr(self, name), bool):
                raise MoeConfigError(
                    f"{name}={getattr(self, name)!r} must be true or false"
                )
        if self.reduce not in _REDUCE_MODES:
            raise MoeConfigError(
                f"reduce={self.reduce!r} must be one of {_REDUCE_MODES}"
            )
        if self.bm2 is not None and not _is_pow2(self.bm2):
            raise MoeConfigError(f"bm2={self.bm2!r} must be null or a power of two")
        p = self.persistent2
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise MoeConfigError(f"persistent2={p!r} must be an integer >= 0")

    @classmethod
    def from_mapping(cls, data, where: str = "config") -> MoeConfig:
        """A config from a mapping of knobs (the missing ones take the defaults);
        ``where`` names the source in errors."""
        if isinstance(data, MoeConfig):
            return data
        if not isinstance(data, dict):
            raise MoeConfigError(
                f"{where}: a config must be an object of knobs, got "
                f"{type(data).__name__}"
            )
        unknown = sorted(set(data) - set(_KNOBS))
        if unknown:
            raise MoeConfigError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(_KNOBS)}"
            )
        try:
            return cls(**data)
        except MoeConfigError as exc:
            raise MoeConfigError(f"{where}: {exc}") from None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def overrides(self) -> dict:
        """The knobs that differ from the defaults (what a config file lists)."""
        return {k: v for k, v in self.as_dict().items() if v != _DEFAULTS[k]}


_KNOBS = tuple(f.name for f in dataclasses.fields(MoeConfig))
_DEFAULTS = MoeConfig().as_dict()

# Under the interpreter every Triton op costs Python time, so few large tiles.
_INTERPRETER_CONFIG = MoeConfig(
    block_m=16, bn1=64, bk1=64, bn2=128, bk2=64, w1=1, w2=1, s1=1, s2=1
)


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What config selection knows of a device (its class).

    ``name``: ``torch.cuda.get_device_name()``; ``arch``: ``sm_90``, ``gfx942``
    (ROCm's gcnArchName without its feature flags); ``num_sms``: multiprocessors
    (compute units); ``smem_bytes``: shared memory (LDS) one program may use;
    ``fp8``: tensor cores with a native FP8 dot for the pipeline's FP8 dtype.
    """

    name: str
    arch: str
    num_sms: int
    smem_bytes: int
    fp8: bool

    @property
    def vendor(self) -> str:
        return "amd" if self.arch.startswith("gfx") else "nvidia"


def device_slug(name: str) -> str:
    """A device name as it goes into config file names (``NVIDIA_H200``)."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def config_file_name(
    device_name: str,
    num_experts: int,
    n: int,
    k: int,
    *,
    block_shape=None,
    static_scales: bool = False,
) -> str:
    """The config file of a device and problem class: vLLM's and AITER's
    convention plus the hidden size, e.g.
    ``E=256,N=256,K=7168,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128,128].json``
    (``n`` the intermediate size per partition, ``k`` the hidden size;
    ``,static`` for per-tensor static activation scales)."""
    return f"{_file_stem(num_experts, n, k, device_slug(device_name))}{_mode_suffix(block_shape, static_scales)}.json"


def _file_stem(num_experts: int, n: int, k: int, slug: str) -> str:
    return f"E={num_experts},N={n},K={k},device_name={slug},dtype=fp8_w8a8"


def _mode_suffix(block_shape, static_scales: bool) -> str:
    suffix = ""
    if block_shape is not None:
        suffix += f",block_shape=[{int(block_shape[0])},{int(block_shape[1])}]"
    return suffix + (",static" if static_scales else "")


def load_config_file(path) -> dict[int, MoeConfig | None]:
    """The table of one config file: ``{M bucket upper bound: config}``, checked
    against the schema (``null`` entries: the heuristic)."""
    return dict(_load_table(str(path)))


@functools.cache  # the shipped files are read once per process
def _load_table(path: str) -> tuple:
    return _parse_table(path)


def _parse_table(path: str) -> tuple:
    # ((M bucket, config or None), ...) sorted by bucket: the one reader of the
    # shipped files and of the autotune cache.
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise MoeConfigError(
            f"{path}: cannot read a JSON config table ({exc})"
        ) from None
    if not isinstance(data, dict) or not data:
        raise MoeConfigError(
            f"{path}: a config table is a non-empty object {{M bucket: config}}"
        )
    rows = []
    for key, cfg in data.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) >= 1):
            raise MoeConfigError(
                f"{path}: M bucket {key!r} must be a positive integer (as a string)"
            )
        where = f"{path}, M bucket {key}"
        rows.append(
            (int(key), None if cfg is None else MoeConfig.from_mapping(cfg, where))
        )
    return tuple(sorted(rows, key=lambda r: r[0]))


@functools.cache
def _tuned_devices(config_dir: str) -> dict[str, DeviceInfo]:
    # devices.json: {device slug: {name, arch, num_sms, smem_bytes, fp8}}
    path = pathlib.Path(config_dir) / "devices.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MoeConfigError(f"{path}: cannot read the device table ({exc})") from None
    fields = {f.name: f for f in dataclasses.fields(DeviceInfo)}
    out = {}
    for slug, entry in data.items():
        if not isinstance(entry, dict) or set(entry) != set(fields):
            raise MoeConfigError(
                f"{path}: device {slug!r} needs exactly the keys {', '.join(fields)}"
            )
        info = DeviceInfo(**entry)
        bad = [
            k
            for k, want in (
                ("name", str),
                ("arch", str),
                ("num_sms", int),
                ("smem_bytes", int),
                ("fp8", bool),
            )
            if not isinstance(getattr(info, k), want)
            or (want is int and isinstance(getattr(info, k), bool))
        ]
        if bad or device_slug(info.name) != slug:
            raise MoeConfigError(
                f"{path}: device {slug!r}: wrong type of {', '.join(bad) or 'name'}"
                " (or a name whose slug is not the key)"
            )
        out[slug] = info
    return out


def known_device(name_or_arch: str, config_dir=None) -> DeviceInfo:
    """A tuned device's class by name (``"AMD Instinct MI300X"``) or arch
    (``"gfx942"``: the first device of that arch in devices.json); for choosing
    configs without the device at hand (offline builds)."""
    devices = _tuned_devices(str(config_dir or CONFIG_DIR))
    slug = device_slug(name_or_arch)
    if slug in devices:
        return devices[slug]
    arch = name_or_arch.split(":")[0]
    for info in devices.values():
        if info.arch == arch:
            return info
    raise MoeConfigError(
        f"no tuned device named or of arch {name_or_arch!r} in devices.json; "
        f"known: {', '.join(devices) or 'none'}"
    )


class ConfigChoice(NamedTuple):
    """What :func:`select_moe_config` chose and from where: ``source`` is the
    config file's name, or ``"heuristic"``."""

    config: MoeConfig
    source: str


def select_moe_config(
    device: DeviceInfo | str,
    num_experts: int,
    n: int,
    k: int,
    m: int,
    *,
    num_cols: int = 8,
    block_shape=None,
    static_scales: bool = False,
    config_dir=None,
) -> ConfigChoice:
    """The launch configuration the pipeline uses for ``m`` tokens of a problem
    (``n`` intermediate, ``k`` hidden size, ``num_cols`` routed columns per token)
    on ``device`` (a :class:`DeviceInfo`, or a device name: then only its own files
    count).

    1. The device's own file for the problem class, else the file of the nearest
       tuned device of the same vendor (devices.json): same arch first, then one
       whose shared memory fits in this device's, the same FP8 support, the
       closest multiprocessor count. Static-scale files fall back to the dynamic
       ones of the same weights.
    2. Inside the file the smallest M bucket ``>= m`` wins, the largest bucket
       also covers every larger M; a ``null`` bucket means the heuristic.
    3. No file of the vendor: the heuristic (sized from the expected rows per
       expert, ``m * num_cols / E``).
    """
    path = tuned_config_file(
        device,
        num_experts,
        n,
        k,
        block_shape=block_shape,
        static_scales=static_scales,
        config_dir=config_dir,
    )
    if path is not None:
        table = _load_table(str(path))
        cfg = next((c for b, c in table if m <= b), table[-1][1])
        if cfg is not None:
            return ConfigChoice(cfg, path.name)
    return ConfigChoice(_heuristic_config(num_experts, n, k, m, num_cols), "heuristic")


def tuned_config_file(
    device: DeviceInfo | str,
    num_experts: int,
    n: int,
    k: int,
    *,
    block_shape=None,
    static_scales: bool = False,
    config_dir=None,
) -> pathlib.Path | None:
    """The config file :func:`select_moe_config` reads for a device and problem
    class (the device's own, else the nearest tuned device's), or None."""
    cdir = str(config_dir or CONFIG_DIR)
    if isinstance(device, str):
        device = _tuned_devices(cdir).get(device_slug(device)) or device
    for static in (True, False) if static_scales else (False,):
        suffix = _mode_suffix(block_shape, static)
        path = _nearest_file(device, num_experts, n, k, suffix, cdir)
        if path is not None:
            return pathlib.Path(path)
    return None


@functools.cache  # the folder is read once per process
def _nearest_file(device, num_experts, n, k, suffix, cdir) -> str | None:
    files = {}
    for path in pathlib.Path(cdir).glob(
        f"E={num_experts},N={n},K={k},device_name=*.json"
    ):
        slug = path.name.split("device_name=", 1)[1].split(",dtype=", 1)[0]
        if path.name == f"{_file_stem(num_experts, n, k, slug)}{suffix}.json":
            files[slug] = str(path)
    name = device if isinstance(device, str) else device.name
    if device_slug(name) in files:
        return files[device_slug(name)]
    if isinstance(device, str):
        return None
    tuned = _tuned_devices(cdir)
    peers = [tuned[s] for s in files if s in tuned and tuned[s].vendor == device.vendor]
    if not peers:
        return None

    def distance(t: DeviceInfo):
        return (
            t.arch != device.arch,
            t.smem_bytes > device.smem_bytes,
            t.fp8 != device.fp8,
            abs(math.log(max(t.num_sms, 1) / max(device.num_sms, 1))),
            t.name,
        )

    return files[device_slug(min(peers, key=distance).name)]


def device_info(device: torch.device) -> DeviceInfo:
    """The class of a CUDA/ROCm device, from its properties."""
    if device.type != "cuda":
        return DeviceInfo("", "cpu", 4, 0, True)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_info_cuda(index)


@functools.cache
def _device_info_cuda(index: int) -> DeviceInfo:
    p = torch.cuda.get_device_properties(index)
    if torch.version.hip is not None:
        arch = p.gcnArchName.split(":")[0]
        smem = getattr(p, "shared_memory_per_block", 65536)
        fp8 = "gfx94" in arch or "gfx95" in arch or arch.startswith("gfx12")
    else:
        arch = f"sm_{p.major}{p.minor}"
        smem = getattr(p, "shared_memory_per_block_optin", 49152)
        fp8 = (p.major, p.minor) >= (8, 9)
    return DeviceInfo(
        torch.cuda.get_device_name(index), arch, p.multi_processor_count, smem, fp8
    )


def _heuristic_config(num_experts: int, n: int, k: int, m: int, cols: int) -> MoeConfig:
    # Starting points from sweeps of benchmarks/tune_moe.py on H100/H200 (sm_90):
    # a separate activation-quantisation pass and an FP8 intermediate won almost
    # everywhere; small M wants many weight-streaming programs (narrow GEMM1
    # tiles, GEMM2 split-K), large M 64-row blocks with 4-warp GEMM1 tiles.
    cfg = dict(_DEFAULTS, quant_x=True, bn2=128)
    rows = m * cols
    rpe = rows / max(num_experts, 1)  # expected rows per expert
    target = 264  # ~2 programs per SM of a large GPU
    if rpe <= 48:
        cfg["block_m"] = 16 if rpe <= 24 else 32
        blocks = min(num_experts, rows) * max(1, round(rpe / cfg["block_m"]))
        bn1 = 128
        while bn1 > 32 and blocks * triton.cdiv(n, bn1) < target:
            bn1 //= 2
        cfg["bn1"] = bn1
        cfg["quant_h"] = bn1 >= 64
        # Still too few weight-streaming programs: split GEMM1 over K as well.
        split1 = 1
        while (
            blocks * triton.cdiv(n, bn1) * split1 < target
            and k // (split1 * 2) >= 4 * cfg["bk1"]
        ):
            split1 *= 2
        cfg["split_k1"] = split1
        # A handful of rows and few GEMM1 column tiles (each re-quantises its x
        # rows): quantise x in GEMM1's prologue, one launch fewer. (H100, Mixtral
        # M=1 with 224 column tiles: the separate pass was faster, 0.173 vs 0.183 ms.)
        cfg["quant_x"] = rows > 16 or triton.cdiv(n, bn1) > 16
        split = 1
        while (
            blocks * triton.cdiv(k, cfg["bn2"]) * split < target
            and n // (split * 2) >= 2 * cfg["bk2"]
        ):
            split *= 2
        cfg["split_k2"] = split
        return MoeConfig(**cfg)
    cfg.update(
        block_m=64 if rpe <= 512 else 128,
        bn1=64,
        w1=4 if rpe <= 512 else 8,
        w2=8,
        s1=3,
        s2=3,
        group_m=8,
        quant_h=True,
        reduce="atomic" if m * k <= (1 << 24) else "buffer",
    )
    return MoeConfig(**cfg)


# AMD Instinct limits a selected configuration must meet, from offline builds with
# Triton 3.9 (tests/kernels/amd_builds.py): (LDS bytes per workgroup, operand
# buffers kept in LDS beyond num_stages - 1, most GEMM1 stages). GEMM1 with 16- or
# 32-row 128-wide tiles and 4 stages needed 102-108 KiB of LDS on gfx942 (64 KiB
# there), and on gfx950 GEMM1 with 4 stages fails to build (the block ping-pong
# pass: "PassManager::run failed"), 3 stages build. gfx950 copies operands
# asynchronously and keeps one buffer more (16x128x128, 3 stages: 107456 bytes).
# On both, GEMM2 with the atomic top-k sum in 128-row tiles spills SGPRs (Mixtral
# M=4096, 128x128 tiles: 22 on gfx942, 34 on gfx950 with 8 warps, 249 and 254
# with 4); 64-row tiles of the same blocks do not (80 and 72 VGPRs).
_ARCH_LIMITS = {"gfx942": (64 << 10, 0, None), "gfx950": (160 << 10, 1, 3)}


def _fit_arch(cfg: dict, arch: str) -> dict:
    """``cfg`` fitted to ``arch``'s limits: the atomic GEMM2 in at most 64-row
    tiles, and GEMM pipelines shortened until the operand buffers (the
    activation tile, FP8 or the bf16 one quantised in the prologue, and GEMM1's
    two weight tiles / GEMM2's one) fit the chip's LDS."""
    if arch not in _ARCH_LIMITS:
        return cfg
    lds, extra, max_s1 = _ARCH_LIMITS[arch]
    bm, bk1, bk2 = cfg["block_m"], cfg["bk1"], cfg["bk2"]
    tile1 = bm * bk1 * (1 if cfg["quant_x"] else 2) + 2 * bk1 * cfg["bn1"]
    bm2 = cfg.get("bm2") or bm
    if (cfg["reduce"] == "atomic" or cfg.get("split_k2", 1) > 1) and bm2 > 64:
        bm2 = 64
    tile2 = bm2 * bk2 * (1 if cfg["quant_h"] else 2) + bk2 * cfg["bn2"]
    s1 = min(cfg["s1"], max_s1 or cfg["s1"])
    s2 = cfg["s2"]
    while s1 > 1 and (s1 - 1 + extra) * tile1 > lds:
        s1 -= 1
    while s2 > 1 and (s2 - 1 + extra) * tile2 > lds:
        s2 -= 1
    return dict(cfg, s1=s1, s2=s2, bm2=None if bm2 == bm else bm2)


# --------------------------------------------------------------------------------------
# Autotune on first use (opt-in: ATOM_CKFREE_MOE_AUTOTUNE=1)
# --------------------------------------------------------------------------------------
AUTOTUNE_ENV = "ATOM_CKFREE_MOE_AUTOTUNE"
AUTOTUNE_CACHE_ENV = "ATOM_CKFREE_MOE_CACHE"
AUTOTUNE_MAX_CANDIDATES = 12  # pipelines timed per (problem class, M bucket)
# The M buckets tuned (the benchmark's grid); the largest covers every larger M.
AUTOTUNE_BUCKETS = (1, 8, 32, 128, 512, 2048, 8192)
# A candidate replaces the best so far only when this much faster: one timing of
# a knob without effect varied by up to 5 % on the H200 (benchmarks/tune_moe.py).
_AUTOTUNE_GAIN = 0.98
# Largest relative deviation of a candidate's output from the fallback's: both
# quantise the activations, each within ~4e-2 of the exact result; a broken
# variant lands far outside.
_AUTOTUNE_TOL = 8e-2
# Single-knob steps from the best config so far, in this order (knob, factor or
# step; None flips a switch). Quantisation knobs are never varied: they change
# the numerics, and only the tuner (with its accuracy checks) picks them.
_AUTOTUNE_STEPS = (
    ("bn1", 0.5),
    ("block_m", 2),
    ("bn1", 2),
    ("block_m", 0.5),
    ("reduce", None),
    ("tma2", None),
    ("s1", -1),
    ("s2", -1),
    ("w1", 2),
    ("w2", 2),
    ("bn2", 0.5),
    ("bn2", 2),
)
# Ranges the steps stay in: the tuner's search space (bn1 at most 128: it is also
# the intermediate's quantisation group).
_AUTOTUNE_RANGE = {
    "block_m": (16, 128),
    "bn1": (16, 128),
    "bn2": (32, 256),
    "s1": (2, 5),
    "s2": (2, 5),
    "w1": (4, 16),
    "w2": (4, 16),
}

_log = logging.getLogger(__name__)
# This process's choices: {(cache file, M bucket): ConfigChoice}.
_AUTOTUNED: dict = {}


def autotune_enabled() -> bool:
    """Whether autotune on first use is switched on (``ATOM_CKFREE_MOE_AUTOTUNE=1``)."""
    return os.environ.get(AUTOTUNE_ENV, "0") == "1"


def autotune_cache_file(
    device_name: str,
    num_experts: int,
    n: int,
    k: int,
    *,
    block_shape=None,
    static_scales: bool = False,
) -> pathlib.Path:
    """The autotune cache of a device and problem class: the config file name of
    :func:`config_file_name` (the device's name in it) in a folder of this Triton
    version, under ``$ATOM_CKFREE_MOE_CACHE`` (default
    ``~/.cache/atom-ckfree/triton-moe``)."""
    root = os.environ.get(AUTOTUNE_CACHE_ENV) or (
        pathlib.Path.home() / ".cache" / "atom-ckfree" / "triton-moe"
    )
    name = config_file_name(
        device_name,
        num_experts,
        n,
        k,
        block_shape=block_shape,
        static_scales=static_scales,
    )
    return pathlib.Path(root) / f"triton-{triton.__version__}" / name


def autotune_bucket(m: int) -> int:
    """The M bucket that ``m`` tokens are tuned (and cached) under."""
    return next((b for b in AUTOTUNE_BUCKETS if m <= b), AUTOTUNE_BUCKETS[-1])


def autotune_moe_config(
    fallback: ConfigChoice,
    device: DeviceInfo,
    num_experts: int,
    n: int,
    k: int,
    m: int,
    measure,
    *,
    num_cols: int = 8,
    block_shape=None,
    static_scales: bool = False,
    config_dir=None,
) -> ConfigChoice:
    """The config for ``m`` tokens on a device without its own config file:
    this process's earlier choice for the M bucket, else the cache file's, else
    the fastest of at most :data:`AUTOTUNE_MAX_CANDIDATES` timed by ``measure``
    (``cfg -> ms``, ``inf`` for a failed or wrong candidate), cached. With the
    device's own file, and while a CUDA/HIP graph is being captured (nothing may
    be timed then), ``fallback`` (:func:`select_moe_config`'s choice)."""
    own = tuned_config_file(
        device,
        num_experts,
        n,
        k,
        block_shape=block_shape,
        static_scales=static_scales,
        config_dir=config_dir,
    )
    if own is not None and own.name.startswith(
        _file_stem(num_experts, n, k, device_slug(device.name)) + ","
    ):
        return fallback
    path = autotune_cache_file(
        device.name,
        num_experts,
        n,
        k,
        block_shape=block_shape,
        static_scales=static_scales,
    )
    bucket = autotune_bucket(m)
    key = (str(path), bucket)
    if key in _AUTOTUNED:
        return _AUTOTUNED[key]
    cached = _read_autotune_cache(path).get(bucket)
    if cached is not None:
        _AUTOTUNED[key] = ConfigChoice(cached, f"autotune cache {path}")
        return _AUTOTUNED[key]
    if _capturing():
        return fallback
    seeds = _autotune_seeds(
        fallback.config,
        device,
        num_experts,
        n,
        k,
        m,
        num_cols,
        block_shape,
        static_scales,
        config_dir,
    )
    best = _autotune_search(seeds, device, measure)
    _write_autotune_cache(path, bucket, best)
    _AUTOTUNED[key] = ConfigChoice(best, f"autotuned {path}")
    return _AUTOTUNED[key]


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _autotune_seeds(
    fallback, device, num_experts, n, k, m, num_cols, block_shape, static, cdir
) -> list[MoeConfig]:
    # The fallback first, then the heuristic, then the nearest device's configs
    # and the heuristic's for the neighbouring M buckets.
    seeds = [fallback, _heuristic_config(num_experts, n, k, m, num_cols)]
    i = AUTOTUNE_BUCKETS.index(autotune_bucket(m))
    for j in (i - 1, i + 1):
        if 0 <= j < len(AUTOTUNE_BUCKETS):
            mj = AUTOTUNE_BUCKETS[j]
            seeds.append(
                select_moe_config(
                    device,
                    num_experts,
                    n,
                    k,
                    mj,
                    num_cols=num_cols,
                    block_shape=block_shape,
                    static_scales=static,
                    config_dir=cdir,
                ).config
            )
            seeds.append(_heuristic_config(num_experts, n, k, mj, num_cols))
    return seeds


def _autotune_search(seeds, device: DeviceInfo, measure) -> MoeConfig:
    """The seeds timed, then single-knob steps from the best so far, at most
    AUTOTUNE_MAX_CANDIDATES timings in all, each candidate fitted to the device
    and within its limits first; the first seed (the fallback) is always
    timed and wins unless another is _AUTOTUNE_GAIN faster."""
    best = _fit_device(seeds[0], device)
    best_t = measure(best)
    seen = {best}

    def consider(cfg):
        nonlocal best, best_t
        if cfg is None:
            return
        cfg = _fit_device(cfg, device)
        if cfg in seen or not _within_limits(cfg, device):
            return
        seen.add(cfg)
        t = measure(cfg)
        if t < best_t * _AUTOTUNE_GAIN:
            best, best_t = cfg, t

    for cfg in seeds[1:]:
        if len(seen) < AUTOTUNE_MAX_CANDIDATES:
            consider(cfg)
    for knob, step in _AUTOTUNE_STEPS:
        if len(seen) < AUTOTUNE_MAX_CANDIDATES:
            consider(_step(best, knob, step, device))
    return best


def _step(cfg: MoeConfig, knob: str, step, device: DeviceInfo) -> MoeConfig | None:
    # One knob of cfg moved by one step, or None outside the tuner's range or
    # what the device has (no tensor descriptors before sm_90 or on AMD).
    v = getattr(cfg, knob)
    if knob == "reduce":
        return dataclasses.replace(cfg, reduce="buffer" if v == "atomic" else "atomic")
    if knob == "tma2":
        if not _has_tma(device):
            return None
        return dataclasses.replace(cfg, tma2=not v)
    new = v + step if knob in ("s1", "s2") else int(v * step)
    lo, hi = _AUTOTUNE_RANGE[knob]
    if not lo <= new <= hi:
        return None
    out = dataclasses.replace(cfg, **{knob: new})
    if out.bm2 is not None and out.bm2 >= out.block_m:
        out = dataclasses.replace(out, bm2=None)
    return out


def _has_tma(device: DeviceInfo) -> bool:
    # Tensor descriptors (GEMM2's tma2): NVIDIA from sm_90 on.
    sm = device.arch[3:]
    return device.vendor == "nvidia" and sm.isdigit() and int(sm) >= 90


def _fit_device(cfg: MoeConfig, device: DeviceInfo) -> MoeConfig:
    # What the pipeline would run of cfg on the device (plan_moe_fp8 fits the
    # selected config the same way), without the accuracy-changing chained GEMM2.
    out = MoeConfig(**_fit_arch(cfg.as_dict(), device.arch))
    if device.vendor == "amd":
        out = dataclasses.replace(out, tma2=False, persistent2=0)
    return dataclasses.replace(out, chain2=False)


def autotune_smem_bytes(cfg: MoeConfig) -> int:
    """Shared memory (LDS) the operand buffers of a config's larger GEMM take:
    per stage, GEMM1 an activation tile (FP8, or bf16 quantised in the
    prologue) and two weight tiles, GEMM2 an intermediate tile and a w2 tile."""
    x_bytes = 1 if cfg.quant_x else 2
    h_bytes = 1 if cfg.quant_h else 2
    g1 = cfg.s1 * (cfg.block_m * cfg.bk1 * x_bytes + 2 * cfg.bn1 * cfg.bk1)
    g2 = cfg.s2 * ((cfg.bm2 or cfg.block_m) * cfg.bk2 * h_bytes + cfg.bn2 * cfg.bk2)
    return max(g1, g2)


def _within_limits(cfg: MoeConfig, device: DeviceInfo) -> bool:
    lane = 64 if device.vendor == "amd" else 32
    return (
        autotune_smem_bytes(cfg) <= device.smem_bytes
        and max(cfg.w1, cfg.w2) * lane <= 1024
        and (cfg.bm2 is None or cfg.bm2 <= cfg.block_m)
        and (not cfg.tma2 or _has_tma(device))
        and not cfg.chain2
    )


def _read_autotune_cache(path: pathlib.Path) -> dict[int, MoeConfig]:
    # A missing cache is empty; a corrupt one, or one in another version's
    # schema, is ignored (and replaced at the next write) with a warning.
    if not path.is_file():
        return {}
    try:
        return {b: c for b, c in _parse_table(str(path)) if c is not None}
    except MoeConfigError as exc:
        _log.warning(
            "ignoring the MoE autotune cache: %s; its buckets are tuned again and "
            "the file rewritten",
            exc,
        )
        return {}


def _write_autotune_cache(path: pathlib.Path, bucket: int, cfg: MoeConfig) -> None:
    # Merged with what is on disk now (another process may have added buckets),
    # written to a temporary file in the same folder and renamed over the cache:
    # readers see the old file or the new one, never a part. Two processes
    # writing at once can lose one's bucket (tuned again later), never corrupt.
    table = _read_autotune_cache(path)
    table[bucket] = cfg
    text = json.dumps({str(b): c.overrides() for b, c in sorted(table.items())})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        _log.warning(
            "cannot write the MoE autotune cache %s (%s); the choice holds for this "
            "process only",
            path,
            exc,
        )


def _pipeline_timer(run):
    """``measure(cfg) -> ms`` for :func:`autotune_moe_config` on the GPU: ``run(cfg)``
    (the pipeline on the caller's inputs) once, checked against the first
    candidate's output, then captured in a CUDA/HIP graph whose replays
    ``triton.testing.do_bench`` times (median, L2 cleared before each; in a graph
    the host's launch cost, which would hide the kernels' at small M, is gone).
    ``inf`` for a candidate that fails to build or run, or gives another result."""
    from triton.testing import do_bench

    first = []

    def measure(cfg: MoeConfig) -> float:
        try:
            out = run(cfg).float()
            if not first:
                first.append(out)
            ref = first[0]
            dev = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            if not (math.isfinite(dev) and dev <= _AUTOTUNE_TOL):
                _log.debug("autotune: %s deviates by %.2e, skipped", cfg, dev)
                return math.inf
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                run(cfg)
            return do_bench(graph.replay, warmup=5, rep=25, return_mode="median")
        except Exception as exc:  # noqa: BLE001 - out of resources and the like
            _log.debug("autotune: %s failed (%s), skipped", cfg, exc)
            return math.inf

    return measure


# --------------------------------------------------------------------------------------
# Host-side helpers
# --------------------------------------------------------------------------------------
def _native_fp8_dot(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether tl.dot takes this FP8 dtype natively on the device (else bf16 dot)."""
    if device.type != "cuda" or _interpreting():
        return True
    return _native_fp8_dot_cuda(dtype, device.index)


@functools.cache
def _native_fp8_dot_cuda(dtype: torch.dtype, index: int | None) -> bool:
    device = torch.device(
        "cuda", torch.cuda.current_device() if index is None else index
    )
    if torch.version.hip is not None:
        arch = torch.cuda.get_device_properties(device).gcnArchName
        if "gfx94" in arch:
            return dtype == torch.float8_e4m3fnuz
        return dtype == torch.float8_e4m3fn
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _num_sms(device: torch.device) -> int:
    """The device's multiprocessors, which persistent grids are sized by (4 off
    CUDA devices: the interpreter's)."""
    if device.type != "cuda":
        return 4
    return _num_sms_cuda(device.index)


@functools.cache
def _num_sms_cuda(index: int | None) -> int:
    idx = torch.cuda.current_device() if index is None else index
    return torch.cuda.get_device_properties(idx).multi_processor_count


def _tma_descriptors(
    h: torch.Tensor, w2: torch.Tensor, h_block: tuple, w_block: tuple
) -> tuple:
    """Tensor descriptors of GEMM2's operands (``h [rows, N]`` FP8 in blocks
    ``h_block``, ``w2 [E, K, N]`` as ``[E * K, N]`` in blocks ``w_block``), or
    ``(None, None)`` where the copy engine cannot take them: Triton without host
    descriptors (< 3.4), no TMA unit (before sm_90, ROCm), no native FP8 dot,
    or operands that are not dense and 16-byte aligned."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None, None
    dev = h.device
    if not _interpreting():
        if dev.type != "cuda" or torch.version.hip is not None:
            return None, None
        if torch.cuda.get_device_capability(dev) < (9, 0):
            return None, None
    if not _native_fp8_dot(w2.dtype, dev) or not w2.is_contiguous():
        return None, None
    if h.stride(1) != 1 or any(
        v % 16 for v in (h.stride(0), h.data_ptr(), w2.shape[2], w2.data_ptr())
    ):
        return None, None
    E, K, N = w2.shape
    return (
        TensorDescriptor.from_tensor(h, list(h_block)),
        TensorDescriptor.from_tensor(w2.view(E * K, N), list(w_block)),
    )


def _check_fp8_dtype(dtype: torch.dtype, device: torch.device) -> None:
    if dtype not in _FP8_DTYPES:
        raise TypeError(f"weights must be float8_e4m3fn/float8_e4m3fnuz, got {dtype}")
    if (
        dtype == torch.float8_e4m3fnuz
        and device.type == "cuda"
        and torch.version.hip is None
        and not _interpreting()
    ):
        raise TypeError("float8_e4m3fnuz weights are only supported on ROCm devices")


class _Scale(NamedTuple):
    mode: int
    tensor: torch.Tensor
    stride_e: int
    stride_n: int
    stride_k: int
    up_offset: int  # per-tensor only: offset of the up-projection scalar


def _classify_scale(
    name: str,
    scale: torch.Tensor,
    num_experts: int,
    rows: int,
    cols: int,
    block_shape,
    split_rows: bool,
) -> _Scale:
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor")
    if not scale.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {scale.dtype}")
    s = scale if scale.dtype == torch.float32 else scale.float()
    shape = tuple(scale.shape)
    if block_shape is not None:
        bn, bk = block_shape
        want = (num_experts, triton.cdiv(rows, bn), triton.cdiv(cols, bk))
        if shape != want:
            raise ValueError(
                f"{name}: block_shape={tuple(block_shape)} needs scales of shape "
                f"{want}, got {shape}"
            )
        return _Scale(_SCALE_BLOCK, s, s.stride(0), s.stride(1), s.stride(2), 0)
    squeezed = shape
    while len(squeezed) > 1 and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    if s.numel() == 1:
        s = s.reshape(1).expand(num_experts)
        return _Scale(_SCALE_TENSOR, s, 0, 0, 0, 0)
    if squeezed == (num_experts,):
        s = s.reshape(num_experts)
        return _Scale(_SCALE_TENSOR, s, s.stride(0), 0, 0, 0)
    if split_rows and squeezed == (num_experts, 2) and rows != 2:
        s = s.reshape(num_experts, 2)
        return _Scale(_SCALE_TENSOR, s, s.stride(0), 0, 0, s.stride(1))
    if squeezed == (num_experts, rows):
        s = s.reshape(num_experts, rows)
        return _Scale(_SCALE_CHANNEL, s, s.stride(0), s.stride(1), 0, 0)
    raise ValueError(
        f"{name}: unsupported scale shape {shape}; expected per-tensor [{num_experts}]"
        f", per-channel [{num_experts}, {rows}] or block scales with block_shape"
    )


def _fp8_meta(dtype: torch.dtype, device: torch.device | None = None) -> dict:
    """The FP8 constexprs of the kernels (with ``UPCAST`` when ``device`` is given)."""
    meta = {
        "FP8_MAX": _fp8_max(dtype),
        "FP8_TINY": _fp8_tiny(dtype),
        "EXACT_ROUND": _interpreting(),
    }
    if device is not None:
        meta["UPCAST"] = not _native_fp8_dot(dtype, device)
    return meta


def _split_k(k: int, split: int, bk: int) -> tuple[int, int]:
    """(reduction length per split, number of splits) for ``split`` requested
    splits of a reduction of length ``k`` in ``bk``-wide steps."""
    k_per_split = triton.cdiv(triton.cdiv(k, max(1, split)), bk) * bk
    return k_per_split, triton.cdiv(k, k_per_split)


# --------------------------------------------------------------------------------------
# Stage wrappers
# --------------------------------------------------------------------------------------
def _scalar_block_scale(cfg: dict, block_n: int, n: int) -> bool:
    """Whether every ``block_n``-wide column tile of an ``n``-wide output lies
    inside one ``sbn``-wide weight-scale block (tiles start at multiples of
    ``block_n``; the up half of GEMM1 starts at ``n``)."""
    return cfg.get("sbn", 1) % block_n == 0 and n % block_n == 0


def _reduce_plan(cfg: dict, num_cols: int) -> tuple[int, int]:
    """(top-k reduction strategy, GEMM2 split-K) for a configuration."""
    reduce = _REDUCE_ATOMIC if cfg["reduce"] == "atomic" else _REDUCE_BUFFER
    split_k = max(1, int(cfg.get("split_k2", 1)))
    if num_cols == 1 and split_k == 1:
        reduce = _REDUCE_DIRECT
    if split_k > 1:
        reduce = _REDUCE_ATOMIC
    return reduce, split_k


def moe_gemm1_silu(
    x: torch.Tensor,
    x_scale: torch.Tensor | None,
    w13: torch.Tensor,
    w13_scale: _Scale,
    align: MoeAlignment,
    num_cols: int,
    cfg: dict,
    quant_out: bool,
    act_dtype: torch.dtype,
    zero_out: torch.Tensor | None = None,
    counters: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GEMM1 over the aligned rows: ``silu(x W_gate^T) * (x W_up^T)``.

    ``x`` is either FP8 with ``x_scale [M, K / group]`` per (token, group)
    scales (a single column: one scale per token; a single element: one static
    scale for all) or bf16/fp16 (``x_scale=None``: quantised per (token,
    ``bk1``) group in the prologue). Returns the intermediate in aligned (sorted)
    row order, ``[max_padded, N]``, either FP8 with ``[max_padded, N / bn1]``
    scales (``quant_out``; with ``out_scale``, one static float32 scale, that
    scale) or in ``act_dtype`` with ``None``. ``zero_out`` (float32, contiguous) is zeroed by
    the same launch. ``cfg["split_k1"] > 1`` splits the reduction over K (small
    M); it needs ``counters``, ``rows // block_m * cdiv(N, bn1)`` zeroed int32
    (left zeroed again).
    """
    _E, two_n, K = w13.shape
    N = two_n // 2
    rows = align.sorted_token_ids.numel()
    bm, bn, bk = align.block_m, cfg["bn1"], cfg["bk1"]
    numel = x.shape[0] * num_cols
    out_static = quant_out and out_scale is not None
    if out_static:
        out = torch.empty((rows, N), dtype=w13.dtype, device=x.device)
        out_s = out_scale.reshape(1)
    elif quant_out:
        out = torch.empty((rows, N), dtype=w13.dtype, device=x.device)
        out_s = torch.empty(
            (rows, triton.cdiv(N, bn)), dtype=torch.float32, device=x.device
        )
    else:
        out = torch.empty((rows, N), dtype=act_dtype, device=x.device)
        out_s = out  # unused
    a_quant = x_scale is None
    x_static = not a_quant and x_scale.numel() == 1
    if x_static:  # one scale for every row and group: zero strides
        x_scale = x_scale.reshape(1, 1).expand(x.shape[0], 1)
    a_s = x if a_quant else x_scale
    x_group = bk if a_quant else K // x_scale.shape[1]
    num_pid_m = rows // bm
    num_pid_n = triton.cdiv(N, bn)
    k_per_split, split = _split_k(K, int(cfg.get("split_k1", 1)), bk)
    part, cnt = out, align.num_tokens_post_padded  # unused unless split > 1
    if split > 1:
        if counters is None or counters.numel() < num_pid_m * num_pid_n:
            raise ValueError("split-K GEMM1 needs zeroed tile counters")
        part = torch.empty((split, rows, 2 * N), dtype=torch.float32, device=x.device)
        cnt = counters
    _moe_gemm1_kernel[(num_pid_m * num_pid_n, split)](
        x,
        a_s,
        w13,
        w13_scale.tensor,
        out,
        out_s,
        part,
        cnt,
        align.sorted_token_ids,
        align.expert_ids,
        align.num_tokens_post_padded,
        N,
        K,
        numel,
        num_cols,
        num_pid_m,
        k_per_split,
        part.stride(0),
        x.stride(0),
        x.stride(1),
        0 if a_quant else a_s.stride(0),
        0 if a_quant else a_s.stride(1),
        w13.stride(0),
        w13.stride(1),
        w13.stride(2),
        w13_scale.stride_e,
        w13_scale.stride_n,
        w13_scale.stride_k,
        w13_scale.up_offset,
        out.stride(0),
        0 if out_static else out_s.stride(0),
        out_s if zero_out is None else zero_out,
        0 if zero_out is None else zero_out.numel(),
        A_QUANT=a_quant,
        A_GROUP=x_group,
        # FP8 x with one scale per token and no block scales: no per-step scaling.
        A_ROW=not a_quant and x_group >= K and w13_scale.mode != _SCALE_BLOCK,
        W_SCALE=w13_scale.mode,
        SBN=cfg.get("sbn", 1),
        SBK=cfg.get("sbk", 1),
        SCALAR_BS=_scalar_block_scale(cfg, bn, N),
        OUT_QUANT=quant_out,
        OUT_STATIC=out_static,
        ZERO_OUT=zero_out is not None,
        **_fp8_meta(w13.dtype, x.device),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        # The split-K tiles go in plain row-major order (GROUP_M=1).
        GROUP_M=cfg["group_m"] if split == 1 else 1,
        SPLIT=split,
        num_warps=cfg["w1"],
        num_stages=cfg["s1"],
    )
    return out, (out_s if quant_out else None)


def moe_gemm2_reduce(
    h: torch.Tensor,
    h_scale: torch.Tensor | None,
    w2: torch.Tensor,
    w2_scale: _Scale,
    topk_weights: torch.Tensor,
    align: MoeAlignment,
    num_tokens: int,
    cfg: dict,
    out_dtype: torch.dtype,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    """GEMM2 over the aligned intermediate, routing weights, top-k sum.

    ``h`` comes from :func:`moe_gemm1_silu` (same alignment); a single-element
    ``h_scale`` is a static scale: with per-tensor/channel weights GEMM2 then
    scales once after its K loop (``cfg["chain2"]``: the K steps chained in the
    dot's accumulator), not per K step. The top-k sum is
    fused: fp32 atomics into an ``[M, K]`` accumulator (``reduce="atomic"``), a
    direct store when there is a single column, or (``reduce="buffer"``, large M)
    one row per (token, column) followed by a sum over the columns.
    ``acc``: an already zeroed float32 ``[M, K]`` accumulator for the atomic
    reduction (see :func:`_reduce_plan`); allocated here when ``None``.
    Returns ``[M, K]`` in ``out_dtype``.
    """
    _E, K, N = w2.shape
    num_cols = topk_weights.shape[1]
    numel = num_tokens * num_cols
    bm, bn, bk = align.block_m, cfg["bn2"], cfg["bk2"]
    dev = h.device
    reduce, split_k = _reduce_plan(cfg, num_cols)
    if reduce == _REDUCE_ATOMIC:
        out = (
            acc
            if acc is not None
            else torch.zeros((num_tokens, K), dtype=torch.float32, device=dev)
        )
    elif reduce == _REDUCE_BUFFER:
        out = torch.empty((numel, K), dtype=out_dtype, device=dev)
    else:
        out = torch.empty((num_tokens, K), dtype=out_dtype, device=dev)
    k_per_split, split_k = _split_k(N, split_k, bk)
    a_quant = h_scale is None
    h_static = not a_quant and h_scale.numel() == 1
    a_row = h_static and w2_scale.mode != _SCALE_BLOCK
    bm2 = cfg.get("bm2") or bm
    if bm % bm2:
        raise ValueError(f"bm2={bm2} must divide block_m={bm}")
    tiles = align.sorted_token_ids.numel() // bm2 * triton.cdiv(K, bn)
    per_sm = int(cfg.get("persistent2", 0))
    if per_sm:
        tiles = min(tiles, per_sm * _num_sms(dev))
    descs = (None, None)
    if cfg.get("tma2", False) and not a_quant:
        descs = _tma_descriptors(h, w2, (bm2, bk), (bn, bk))
    _moe_gemm2_kernel[(max(tiles, 1), split_k)](
        h,
        h if a_quant else h_scale,
        w2,
        w2_scale.tensor,
        out,
        topk_weights,
        align.sorted_token_ids,
        align.expert_ids,
        align.num_tokens_post_padded,
        *descs,
        K,
        N,
        numel,
        num_cols,
        k_per_split,
        h.stride(0),
        0 if a_quant or h_static else h_scale.stride(0),
        w2.stride(0),
        w2.stride(1),
        w2.stride(2),
        w2_scale.stride_e,
        w2_scale.stride_n,
        w2_scale.stride_k,
        out.stride(0),
        topk_weights.stride(0),
        topk_weights.stride(1),
        A_QUANT=a_quant,
        # A static scale is one element: every K step reads element 0.
        A_GROUP=max(N, 1) if h_static else cfg.get("h_group", cfg["bn1"]),
        A_ROW=a_row,
        CHAIN=a_row and bool(cfg.get("chain2", False)),
        W_SCALE=w2_scale.mode,
        SBN=cfg.get("sbn", 1),
        SBK=cfg.get("sbk", 1),
        SCALAR_BS=_scalar_block_scale(cfg, bn, K),
        REDUCE=reduce,
        TMA=descs[0] is not None,
        PERSISTENT=per_sm > 0,
        **_fp8_meta(w2.dtype, dev),
        BLOCK_M=bm2,
        ALIGN_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        GROUP_M=cfg["group_m"],
        num_warps=cfg["w2"],
        num_stages=cfg["s2"],
    )
    if reduce == _REDUCE_ATOMIC:
        return out.to(out_dtype)
    if reduce == _REDUCE_BUFFER:
        summed = torch.empty((num_tokens, K), dtype=out_dtype, device=dev)
        block = min(1024, triton.next_power_of_2(K))
        _topk_sum_kernel[(num_tokens, triton.cdiv(K, block))](
            out,
            summed,
            K,
            num_cols,
            C_P2=triton.next_power_of_2(num_cols),
            BLOCK=block,
            EXACT_ROUND=_interpreting(),
        )
        return summed
    return out


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------
def _validate(
    hidden_states, w13, w2, topk_weights, topk_ids, block_shape, num_fused_shared
):
    for name, t in (
        ("hidden_states", hidden_states),
        ("w13", w13),
        ("w2", w2),
        ("topk_weights", topk_weights),
        ("topk_ids", topk_ids),
    ):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden_states.dtype not in _ACT_DTYPES:
        raise TypeError(
            f"hidden_states must be bfloat16 or float16, got {hidden_states.dtype}"
        )
    _check_fp8_dtype(w13.dtype, w13.device)
    if w2.dtype != w13.dtype:
        raise TypeError(f"w2 dtype {w2.dtype} differs from w13 dtype {w13.dtype}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if not topk_weights.is_floating_point():
        raise TypeError(
            f"topk_weights must be floating point, got {topk_weights.dtype}"
        )
    if hidden_states.dim() != 2:
        raise ValueError(
            f"hidden_states must be [M, K], got {tuple(hidden_states.shape)}"
        )
    if w13.dim() != 3 or w2.dim() != 3:
        raise ValueError("w13 must be [E, 2N, K] and w2 [E, K, N]")
    M, K = hidden_states.shape
    E, two_n, k13 = w13.shape
    if two_n % 2 or two_n == 0:
        raise ValueError(f"w13 dim 1 must be 2N (even, > 0), got {two_n}")
    N = two_n // 2
    if k13 != K:
        raise ValueError(f"w13 is [E, 2N, {k13}] but hidden_states has K={K}")
    if tuple(w2.shape) != (E, K, N):
        raise ValueError(f"w2 must be [{E}, {K}, {N}], got {tuple(w2.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != M:
        raise ValueError(f"topk_ids must be [M={M}, C], got {tuple(topk_ids.shape)}")
    if tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise ValueError(
            f"topk_weights {tuple(topk_weights.shape)} must match topk_ids "
            f"{tuple(topk_ids.shape)}"
        )
    if not 0 <= num_fused_shared < max(topk_ids.shape[1], 1):
        raise ValueError(
            f"num_fused_shared_experts={num_fused_shared} must be >= 0 and leave at "
            f"least one routed column of {topk_ids.shape[1]}"
        )
    if block_shape is not None:
        if len(block_shape) != 2:
            raise ValueError(f"block_shape must be (bn, bk), got {block_shape}")
        bn, bk = int(block_shape[0]), int(block_shape[1])
        if bn < 1 or bk < 16 or bk & (bk - 1):
            raise ValueError(
                f"block_shape={tuple(block_shape)}: bn must be >= 1 and bk a power "
                "of two >= 16"
            )
    devs = {t.device for t in (hidden_states, w13, w2, topk_weights, topk_ids)}
    if len(devs) != 1:
        raise ValueError(f"all tensors must be on one device, got {devs}")
    return M, K, E, N


def _static_scale(name: str, scale, device: torch.device) -> torch.Tensor | None:
    # A checkpoint's static activation scale: one float32, or one per expert (the
    # largest is taken: the activations are quantised once, before routing).
    if scale is None:
        return None
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor or None")
    if scale.numel() == 0:
        raise ValueError(f"{name} is empty; give one scale or one per expert")
    if scale.device != device:
        raise ValueError(f"{name} must be on the activations' device {device}")
    s = scale.float().reshape(-1)
    return (s if s.numel() == 1 else s.amax()).reshape(1)


class MoePlan(NamedTuple):
    """A checked MoE problem and its launch configuration; its stages
    (:meth:`align`, :meth:`gemm1`, :meth:`gemm2`) run the pipeline one step at
    a time (:func:`plan_moe_fp8` builds it, :meth:`run` runs all three)."""

    x: torch.Tensor
    w13: torch.Tensor
    w2: torch.Tensor
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    s13: _Scale
    s2: _Scale
    a13_scale: torch.Tensor | None
    a2_scale: torch.Tensor | None
    num_experts: int
    cfg: dict

    def align(self) -> tuple[MoeAlignment, torch.Tensor | None]:
        """Routing alignment (with GEMM1's split-K counters zeroed)."""
        cfg, E, N = self.cfg, self.num_experts, self.w2.shape[2]
        counters = None
        if int(cfg["split_k1"]) > 1:
            rows = _max_padded(self.topk_ids.numel(), E, cfg["block_m"])
            counters = torch.empty(
                max(rows // cfg["block_m"] * triton.cdiv(N, cfg["bn1"]), 1),
                dtype=torch.int32,
                device=self.x.device,
            )
        align = moe_align_block_size(
            self.topk_ids, cfg["block_m"], E, zero_buf=counters
        )
        return align, counters

    def gemm1(self, align_out) -> tuple:
        """Activation quantisation and GEMM1 + SiLU * up: ``(h, h scales, acc)``
        (``acc``: GEMM2's zeroed float32 accumulator, or None)."""
        align, counters = align_out
        cfg, x, K = self.cfg, self.x, self.x.shape[1]
        M, num_cols = self.topk_ids.shape
        if self.a13_scale is not None:
            xq, xs = static_quant_fp8(x, self.a13_scale, self.w13.dtype), self.a13_scale
        elif cfg["quant_x"] and K % cfg["x_group"] == 0:
            xq, xs = per_token_group_quant_fp8(x, cfg["x_group"], self.w13.dtype)
        else:
            xq, xs = x, None
        acc = None
        if _reduce_plan(cfg, num_cols)[0] == _REDUCE_ATOMIC:
            acc = torch.empty((M, K), dtype=torch.float32, device=x.device)
        h, hs = moe_gemm1_silu(
            xq,
            xs,
            self.w13,
            self.s13,
            align,
            num_cols,
            cfg,
            cfg["quant_h"],
            x.dtype,
            zero_out=acc,
            counters=counters,
            out_scale=self.a2_scale,
        )
        return h, hs, acc

    def gemm2(self, align_out, gemm1_out) -> torch.Tensor:
        """GEMM2 with the routing weights and the top-k sum: the output."""
        h, hs, acc = gemm1_out
        return moe_gemm2_reduce(
            h,
            hs,
            self.w2,
            self.s2,
            self.topk_weights,
            align_out[0],
            self.x.shape[0],
            self.cfg,
            self.x.dtype,
            acc=acc,
        )

    def run(self) -> torch.Tensor:
        a = self.align()
        return self.gemm2(a, self.gemm1(a))


def plan_moe_fp8(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    block_shape: tuple[int, int] | list[int] | None = None,
    num_fused_shared_experts: int = 0,
    a13_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    config: MoeConfig | dict | None = None,
) -> MoePlan:
    """Check a problem (arguments of :func:`fused_moe_fp8`) and choose its launch
    configuration; M must be > 0."""
    M, K, E, N = _validate(
        hidden_states,
        w13,
        w2,
        topk_weights,
        topk_ids,
        block_shape,
        num_fused_shared_experts,
    )
    s13 = _classify_scale("w13_scale", w13_scale, E, 2 * N, K, block_shape, True)
    s2 = _classify_scale("w2_scale", w2_scale, E, K, N, block_shape, False)
    for sc in (s13, s2):
        if sc.tensor.device != w13.device:
            raise ValueError("weight scales must be on the weights' device")
    a13 = _static_scale("a13_scale", a13_scale, hidden_states.device)
    a2 = _static_scale("a2_scale", a2_scale, hidden_states.device)
    num_cols = topk_ids.shape[1]
    static = a13 is not None or a2 is not None
    if config is not None:
        cfg = MoeConfig.from_mapping(config).as_dict()
    elif _interpreting():
        cfg = _INTERPRETER_CONFIG.as_dict()
    else:
        device = device_info(hidden_states.device)
        choice = select_moe_config(
            device,
            E,
            N,
            K,
            M,
            num_cols=num_cols,
            block_shape=block_shape,
            static_scales=static,
        )
        if M and hidden_states.is_cuda and autotune_enabled():

            def run(cfg):
                return fused_moe_fp8(
                    hidden_states,
                    w13,
                    w2,
                    topk_weights,
                    topk_ids,
                    w13_scale=w13_scale,
                    w2_scale=w2_scale,
                    block_shape=block_shape,
                    num_fused_shared_experts=num_fused_shared_experts,
                    a13_scale=a13_scale,
                    a2_scale=a2_scale,
                    config=cfg,
                )

            choice = autotune_moe_config(
                choice,
                device,
                E,
                N,
                K,
                M,
                _pipeline_timer(run),
                num_cols=num_cols,
                block_shape=block_shape,
                static_scales=static,
            )
        cfg = _fit_arch(choice.config.as_dict(), device.arch)
    if a2 is not None:
        cfg["quant_h"] = True  # the intermediate is quantised with the given scale

    # K tiles must respect the scale groups: x groups are 128 wide, block scales
    # are bk wide; the intermediate's groups are bn1 wide.
    if block_shape is not None:
        sbn, sbk = int(block_shape[0]), int(block_shape[1])
        cfg["bk1"] = min(cfg["bk1"], sbk)
        cfg["bk2"] = min(cfg["bk2"], sbk)
        cfg["sbn"], cfg["sbk"] = sbn, sbk
    cfg["bk1"] = min(cfg["bk1"], 128)
    if cfg["quant_h"] and a2 is None:
        cfg["bk2"] = min(cfg["bk2"], cfg["bn1"])
    cfg["h_group"] = cfg["bn1"]
    # Per-token x scales only without block scales (those need K-step scaling).
    cfg["x_group"] = K if cfg["x_per_token"] and block_shape is None else 128

    x = hidden_states
    if x.stride(1) != 1:
        x = x.contiguous()
    return MoePlan(x, w13, w2, topk_weights, topk_ids, s13, s2, a13, a2, E, cfg)


def fused_moe_fp8(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    block_shape: tuple[int, int] | list[int] | None = None,
    num_fused_shared_experts: int = 0,
    a13_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    config: MoeConfig | dict | None = None,
) -> torch.Tensor:
    """FP8 MoE forward: route, GEMM1 + SiLU*up, GEMM2 + weighted top-k sum.

    See the module docstring for the argument contract. ``a13_scale`` /
    ``a2_scale``: the checkpoint's static activation scales of the input and of
    the intermediate (one float32, or one per expert: the largest is used); with
    them the activations are quantised with those scales (no amax reduction) and,
    for per-tensor/channel weights, both GEMMs scale once after their K loop.
    ``config`` overrides the launch configuration of :func:`select_moe_config`
    (a :class:`MoeConfig` or a mapping of its knobs; the tuner's). The stages can
    be run one at a time through :func:`plan_moe_fp8`.
    """
    plan = plan_moe_fp8(
        hidden_states,
        w13,
        w2,
        topk_weights,
        topk_ids,
        w13_scale=w13_scale,
        w2_scale=w2_scale,
        block_shape=block_shape,
        num_fused_shared_experts=num_fused_shared_experts,
        a13_scale=a13_scale,
        a2_scale=a2_scale,
        config=config,
    )
    if hidden_states.shape[0] == 0:
        return torch.empty(
            (0, hidden_states.shape[1]),
            dtype=hidden_states.dtype,
            device=hidden_states.device,
        )
    return plan.run()
