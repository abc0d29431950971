# SPDX-License-Identifier: Apache-2.0
"""FlyDSL fused-MoE backend for ATOM's CK-free mode (RFC PR 4).

Pipeline (all steps on the device, no host synchronisation, CUDA-graph friendly
after the first call has compiled the kernels):

1. ``moe_sorting_torch``: torch-native MoE sorting. Groups every routed
   (token, top-k slot) pair by expert and pads each expert to the GEMM block
   size, in the encoding FlyDSL's two-stage MoE GEMM (and CK's ``moe_sorting``)
   consumes.
2. ``per_token_quant_fp8``: dynamic per-token FP8 quantisation of the
   activations.
3. Stage 1 (FlyDSL ``compile_moe_gemm1``): ``silu(x @ w1^T) * (x @ w3^T)``
   scattered to ``[tokens, top_k, inter]``.
4. Per-row FP8 quantisation of the stage-1 output (one scale per
   (token, slot) row).
5. Stage 2 (FlyDSL ``compile_moe_gemm2``): ``(a2 @ w2^T) * routing weight``,
   summed over the top-k slots (per-slot rows + a torch sum, or fp32 atomics).

Kernel contract targeted (read from FlyDSL's sources,
``kernels/moe/moe_gemm_2stage/{gemm1,gemm2,layout_helpers}.py``; before
July 2026 the same builders lived in ``kernels/moe_gemm_2stage.py``)::

    launcher = compile_moe_gemm1(model_dim=K, inter_dim=N, experts=E, topk=T,
                                 tile_m=BM, tile_n=BN, tile_k=BK,
                                 doweight_stage1=False, out_dtype="bf16"|"f16",
                                 in_dtype="fp8")
    launcher(out[M, T, N], x_q.view(-1), w13_shuffled.view(-1),
             x_scale[M] f32, w13_scale[E*2N] f32,
             sorted_token_ids i32, sorted_expert_ids i32, sorted_weights f32,
             num_valid_ids i32[1], M, N, K, num_blocks, stream)

    launcher = compile_moe_gemm2(model_dim=K, inter_dim=N, experts=E, topk=T,
                                 tile_m=BM, tile_n=BN, tile_k=BK,
                                 doweight_stage2=True, out_dtype=...,
                                 accumulate=bool, in_dtype="fp8")
    launcher(out, a2_q.view(-1), w2_shuffled.view(-1),
             a2_scale[M*T] f32 (row = token*T + slot), w2_scale[E*K] f32,
             sorted_token_ids, sorted_expert_ids, sorted_weights,
             num_valid_ids, M, K, N, num_blocks, stream)
    # accumulate=False: out is [M*T, K] (one row per (token, slot));
    # accumulate=True:  out is a zeroed [M, K] that the kernel atomically adds to.

Sorting encoding (FlyDSL ``kernels/moe/moe_sorting_kernel.py`` and
``tests/kernels/test_moe_sorting.py``, identical to CK/AITER ``moe_sorting``)::

    max_num_tokens_padded = M*T + E*BM - T
    max_num_m_blocks      = ceil(max_num_tokens_padded / BM)
    sorted_token_ids[max_num_tokens_padded] int32 = (slot << 24) | token,
        experts in ascending order, (token, slot) ascending inside an expert,
        each expert padded to a multiple of BM with the sentinel (T << 24) | M;
        experts with no tokens get no block
    sorted_weights[max_num_tokens_padded] f32   = topk_weights[token, slot], 0 padding
    sorted_expert_ids[max_num_m_blocks] int32   = expert of each BM-row block, -1 after
    num_valid_ids[2] int32                      = [padded row count, M]

The kernels skip every block ``b`` with ``b*BM >= num_valid_ids[0]``, so the
grid is launched over ``max_num_m_blocks`` blocks without reading the count on
the host.

This module imports only ``torch`` and the standard library at top level;
FlyDSL is imported lazily and its absence never breaks ``import``.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Any, NamedTuple

import torch

__all__ = [
    "FLYDSL_MOE_MODULES",
    "MoeSortingResult",
    "flydsl_fp8_moe",
    "flydsl_fp8_moe_unsupported_reason",
    "flydsl_moe_available",
    "flydsl_moe_import_error",
    "moe_sorting_torch",
    "per_token_quant_fp8",
    "shuffle_weight_fp8",
]

# Module paths that provide FlyDSL's two-stage MoE GEMM builders, newest first.
FLYDSL_MOE_MODULES = (
    "kernels.moe.moe_gemm_2stage",  # FlyDSL >= 2026-07 (package layout)
    "kernels.moe_gemm_2stage",  # FlyDSL source checkouts before 2026-07
)

FP8_DTYPES = (torch.float8_e4m3fnuz, torch.float8_e4m3fn)

_TOKEN_BITS = 24
_SHUFFLE_N = 16  # rows per preshuffle tile
_SHUFFLE_K_BYTES = 16  # bytes per row chunk of a preshuffle tile (one 128-bit load)

_OUT_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "f16"}

_import_error: str | None = None


class _FlyDSLMoEKernels(NamedTuple):
    module_name: str
    compile_moe_gemm1: Any
    compile_moe_gemm2: Any


class MoeSortingResult(NamedTuple):
    """Routing tables for a block-wise MoE GEMM (see the module docstring)."""

    sorted_token_ids: torch.Tensor  # int32 [max_num_tokens_padded]
    sorted_weights: torch.Tensor  # float32 [max_num_tokens_padded]
    sorted_expert_ids: torch.Tensor  # int32 [max_num_m_blocks]
    num_valid_ids: torch.Tensor  # int32 [2]: padded row count, number of tokens


# --------------------------------------------------------------------------------------
# FlyDSL detection (lazy, cached)
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _load_flydsl_kernels() -> _FlyDSLMoEKernels | None:
    global _import_error
    errors = []
    for name in FLYDSL_MOE_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - ImportError or a FlyDSL runtime error
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        gemm1 = getattr(mod, "compile_moe_gemm1", None)
        gemm2 = getattr(mod, "compile_moe_gemm2", None)
        if callable(gemm1) and callable(gemm2):
            _import_error = None
            return _FlyDSLMoEKernels(name, gemm1, gemm2)
        errors.append(f"{name}: no compile_moe_gemm1/compile_moe_gemm2")
    _import_error = "; ".join(errors)
    return None


def flydsl_moe_available() -> bool:
    """True when FlyDSL's two-stage MoE GEMM kernels import (checked once, cached)."""
    return _load_flydsl_kernels() is not None


def flydsl_moe_import_error() -> str | None:
    """Why ``flydsl_moe_available()`` is False (None when it is True or unchecked)."""
    _load_flydsl_kernels()
    return _import_error


def _require_flydsl() -> _FlyDSLMoEKernels:
    kernels = _load_flydsl_kernels()
    if kernels is None:
        raise RuntimeError(
            "flydsl_fp8_moe needs FlyDSL's MoE GEMM kernels, which are not importable "
            f"(tried {', '.join(FLYDSL_MOE_MODULES)}: {_import_error}). Put a FlyDSL "
            "source checkout on PYTHONPATH (its MoE kernels are not in the pip "
            "package) or use the Triton MoE backend."
        )
    return kernels


# --------------------------------------------------------------------------------------
# Sorting
# --------------------------------------------------------------------------------------
def moe_sorting_torch(
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    num_experts: int,
    block_size: int,
) -> MoeSortingResult:
    """Sort routed (token, slot) pairs by expert, padded to ``block_size`` rows.

    Vectorised torch (one stable argsort, scatters, cumsums, a searchsorted); no
    Python loop over tokens or experts and no host synchronisation. Returns the
    FlyDSL/CK encoding described in the module docstring. Every id in
    ``topk_ids`` must lie in ``[0, num_experts)``; the same expert may appear
    in several slots of one token.
    """
    if topk_ids.dim() != 2:
        raise ValueError(
            f"topk_ids must be [tokens, top_k], got {tuple(topk_ids.shape)}"
        )
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights {tuple(topk_weights.shape)} must match topk_ids "
            f"{tuple(topk_ids.shape)}"
        )
    if num_experts <= 0 or block_size <= 0:
        raise ValueError(
            f"need num_experts > 0 and block_size > 0, got {num_experts}, {block_size}"
        )
    num_tokens, top_k = topk_ids.shape
    if num_tokens >= (1 << _TOKEN_BITS) or top_k >= (1 << (31 - _TOKEN_BITS)):
        raise ValueError(
            f"{num_tokens} tokens x top_k {top_k} do not fit the "
            "(slot << 24) | token encoding"
        )
    if top_k > num_experts:
        # The padded buffer size (shared with CK) assumes top_k <= num_experts.
        raise ValueError(f"top_k={top_k} exceeds num_experts={num_experts}")
    device = topk_ids.device
    n = num_tokens * top_k
    max_num_tokens_padded = n + num_experts * block_size - top_k
    max_num_m_blocks = (max_num_tokens_padded + block_size - 1) // block_size

    flat = topk_ids.reshape(-1).to(torch.int64)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    blocks = (counts + (block_size - 1)) // block_size
    padded = blocks * block_size
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    count_start = torch.cumsum(counts, 0) - counts

    # Stable: inside an expert, rows keep flat order = (token, slot) ascending.
    order = torch.argsort(flat, stable=True)
    expert_of_row = flat[order]
    rank = (
        torch.arange(n, dtype=torch.int64, device=device) - count_start[expert_of_row]
    )
    dest = padded_start[expert_of_row] + rank
    packed = ((order % top_k) << _TOKEN_BITS) | (order // top_k)

    sentinel = (top_k << _TOKEN_BITS) | num_tokens
    sorted_token_ids = torch.full(
        (max_num_tokens_padded,), sentinel, dtype=torch.int32, device=device
    )
    sorted_token_ids.scatter_(0, dest, packed.to(torch.int32))
    sorted_weights = torch.zeros(
        max_num_tokens_padded, dtype=torch.float32, device=device
    )
    sorted_weights.scatter_(0, dest, topk_weights.reshape(-1)[order].to(torch.float32))

    block_end = torch.cumsum(blocks, 0)
    block_idx = torch.arange(max_num_m_blocks, dtype=torch.int64, device=device)
    expert_of_block = torch.searchsorted(block_end, block_idx, right=True)
    sorted_expert_ids = torch.where(
        block_idx < block_end[-1], expert_of_block, torch.full_like(expert_of_block, -1)
    ).to(torch.int32)

    num_valid_ids = torch.full((2,), num_tokens, dtype=torch.int32, device=device)
    num_valid_ids[0] = padded_end[-1]
    return MoeSortingResult(
        sorted_token_ids, sorted_weights, sorted_expert_ids, num_valid_ids
    )


# --------------------------------------------------------------------------------------
# Quantisation and weight layout
# --------------------------------------------------------------------------------------
def _check_fp8_dtype(fp8_dtype: torch.dtype) -> None:
    if fp8_dtype not in FP8_DTYPES:
        raise ValueError(
            f"fp8_dtype must be torch.float8_e4m3fnuz (gfx942) or torch.float8_e4m3fn "
            f"(gfx950, NVIDIA), got {fp8_dtype}"
        )


def per_token_quant_fp8(
    x: torch.Tensor, fp8_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token (per-row) FP8 quantisation.

    Returns ``(q, scale)`` with ``q`` of dtype ``fp8_dtype`` and the shape of ``x``,
    and ``scale`` float32 of shape ``x.shape[:-1] + (1,)`` such that
    ``q * scale ~= x``: ``scale = amax(|row|) / finfo(fp8_dtype).max`` (1 for an
    all-zero row), ``q = round_to_nearest_even(row / scale)``.
    """
    _check_fp8_dtype(fp8_dtype)
    fp8_max = torch.finfo(fp8_dtype).max
    xf = x.to(torch.float32)
    amax = xf.abs().amax(dim=-1, keepdim=True)
    scale = amax / fp8_max
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (xf / scale).clamp_(-fp8_max, fp8_max).to(fp8_dtype)
    return q, scale


def shuffle_weight_fp8(w: torch.Tensor) -> torch.Tensor:
    """Pre-shuffle ``[..., N, K]`` 1-byte weights into FlyDSL's (16, 16) B layout.

    Element ``(n, k)`` of each ``[N, K]`` matrix moves to
    ``(n // 16) * 16 * K + (k // 16) * 256 + (n % 16) * 16 + (k % 16)``
    (FlyDSL ``layout_helpers.make_weight_view``; the same bytes AITER's
    ``shuffle_weight(w, layout=(16, 16))`` produces for fp8). Shape is kept.
    """
    if w.element_size() != 1:
        raise ValueError(f"shuffle_weight_fp8 expects a 1-byte dtype, got {w.dtype}")
    n, k = w.shape[-2], w.shape[-1]
    if n % _SHUFFLE_N or k % (2 * _SHUFFLE_K_BYTES):
        raise ValueError(
            f"weight [{n}, {k}] must have N % {_SHUFFLE_N} == 0 and K % "
            f"{2 * _SHUFFLE_K_BYTES} == 0 to be pre-shuffled"
        )
    lead = w.shape[:-2]
    tiles = w.reshape(
        -1, n // _SHUFFLE_N, _SHUFFLE_N, k // _SHUFFLE_K_BYTES, _SHUFFLE_K_BYTES
    )
    return tiles.permute(0, 1, 3, 2, 4).contiguous().view(*lead, n, k)


# --------------------------------------------------------------------------------------
# Shape / quantisation-mode checks
# --------------------------------------------------------------------------------------
def _default_block_m(num_tokens: int, top_k: int, num_experts: int) -> int:
    rows_per_expert = num_tokens * top_k / max(num_experts, 1)
    if rows_per_expert <= 16:
        return 16
    if rows_per_expert <= 32:
        return 32
    return 64


def _tiles(hidden_size: int, intermediate_size: int) -> dict:
    return {
        "tile_n1": 128 if intermediate_size % 128 == 0 else 64,
        "tile_k1": 128,
        "tile_n2": 128 if hidden_size % 128 == 0 else 64,
        "tile_k2": 128,
    }


def _shape_problem(
    hidden_size: int,
    intermediate_size: int,
    block_m: int,
    tile_n1: int,
    tile_k1: int,
    tile_n2: int,
    tile_k2: int,
) -> str | None:
    """Constraints of FlyDSL's fp8 stage-1/stage-2 builders (asserted there)."""
    if not (16 <= block_m <= 256 and block_m % 16 == 0):
        return f"block_m={block_m} must be a multiple of 16 in [16, 256]"
    if tile_k1 not in (128, 256) or tile_k2 not in (128, 256):
        return f"tile_k must be 128 or 256, got {tile_k1}, {tile_k2}"
    for name, tile in (("tile_n1", tile_n1), ("tile_n2", tile_n2)):
        if not (64 <= tile <= 256 and tile % 64 == 0):
            return f"{name}={tile} must be a multiple of 64 in [64, 256]"
    if hidden_size % tile_k1 or (hidden_size // tile_k1) % 2:
        return (
            f"hidden_size={hidden_size} must be an even multiple of tile_k1={tile_k1}"
        )
    channel_tile = min(tile_n1, 128)
    if intermediate_size % channel_tile or intermediate_size % tile_n1:
        return f"intermediate_size={intermediate_size} % tile_n1={tile_n1} != 0"
    if intermediate_size % tile_k2:
        return f"intermediate_size={intermediate_size} % tile_k2={tile_k2} != 0"
    if hidden_size % tile_n2:
        return f"hidden_size={hidden_size} % tile_n2={tile_n2} != 0"
    return None


def _scale_mode(scale_shape: tuple, num_experts: int, out_channels: int) -> str | None:
    numel = math.prod(scale_shape)
    if len(scale_shape) == 3 and scale_shape[-1] != 1:
        return "block"
    if numel == num_experts * out_channels:
        return "per_channel"
    if numel == num_experts:
        return "per_tensor"
    return None


def flydsl_fp8_moe_unsupported_reason(
    *,
    hidden_size: int,
    intermediate_size: int,
    num_experts: int,
    w13_scale_shape: tuple,
    w2_scale_shape: tuple,
    fp8_dtype: torch.dtype,
    activation: str = "silu",
    hidden_dtype: torch.dtype = torch.bfloat16,
    block_m: int | None = None,
) -> str | None:
    """None when ``flydsl_fp8_moe`` supports the configuration, else the reason.

    Host-only (shapes and dtypes), so a backend cascade can decide once at
    construction. Does not check whether FlyDSL is importable
    (``flydsl_moe_available``).
    """
    if fp8_dtype not in FP8_DTYPES:
        return f"fp8 dtype {fp8_dtype} is not float8_e4m3fnuz / float8_e4m3fn"
    if activation != "silu":
        return f"activation {activation!r} is not supported (silu only)"
    if hidden_dtype not in _OUT_DTYPE_NAMES:
        return f"activation dtype {hidden_dtype} is not bfloat16 / float16"
    for name, shape, channels, split in (
        ("w13_scale", w13_scale_shape, 2 * intermediate_size, 2),
        ("w2_scale", w2_scale_shape, hidden_size, 1),
    ):
        try:
            _channel_scale(
                torch.empty(tuple(shape), device="meta"),
                name,
                num_experts,
                channels,
                split,
            )
        except ValueError as exc:
            return str(exc)
    tiles = _tiles(hidden_size, intermediate_size)
    bm = 16 if block_m is None else block_m
    return _shape_problem(hidden_size, intermediate_size, bm, **tiles)


def _channel_scale(
    scale: torch.Tensor, name: str, num_experts: int, out_channels: int, split: int
) -> torch.Tensor:
    """Weight scale -> float32 [E * out_channels] per output channel."""
    shape = tuple(scale.shape)
    mode = _scale_mode(shape, num_experts, out_channels)
    s = scale.to(torch.float32)
    if mode == "per_channel":
        return s.reshape(-1).contiguous()
    if mode == "per_tensor":
        return s.reshape(num_experts, 1).expand(num_experts, out_channels).reshape(-1)
    if split == 2 and shape[-1:] == (2,) and s.numel() == 2 * num_experts:
        # w13 loaded as separate w1 / w3 per-tensor scales: [E, 2].
        half = out_channels // 2
        return s.reshape(num_experts, 2).repeat_interleave(half, dim=1).reshape(-1)
    raise ValueError(
        f"{name} of shape {shape} is not supported by flydsl_fp8_moe: expected "
        f"per-output-channel [E, {out_channels}] (or [E, {out_channels}, 1]) or "
        f"per-tensor [E] scales"
        + (", or [E, 2] for separate w1/w3 scales" if split == 2 else "")
        + ("; block scales are not supported" if mode == "block" else "")
    )


def _current_stream(device: torch.device) -> int | None:
    """Raw stream handle for the launchers (``fx.Stream`` and the older i64 form
    both take an int); None (the default queue) off the GPU."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return None


# --------------------------------------------------------------------------------------
# Public entry
# --------------------------------------------------------------------------------------
def flydsl_fp8_moe(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    w13_scale: torch.Tensor,
    w2_scale: torch.Tensor,
    fp8_dtype: torch.dtype | None = None,
    activation: str = "silu",
    weights_preshuffled: bool = True,
    block_m: int | None = None,
    stage2_mode: str = "reduce",
    tile_n1: int | None = None,
    tile_k1: int | None = None,
    tile_n2: int | None = None,
    tile_k2: int | None = None,
) -> torch.Tensor:
    """FP8 fused MoE through FlyDSL's two-stage MoE GEMM.

    ``out[t] = sum_j topk_weights[t, j] * w2[e] @ (silu(w1[e] @ x[t]) * w3[e] @ x[t])``
    with ``e = topk_ids[t, j]`` and ``w13[e] = [w1[e]; w3[e]]`` (gate rows first).

    Args:
        hidden_states: ``[M, K]`` bfloat16 or float16 (the output dtype).
        w13: ``[E, 2N, K]`` fp8, gate rows ``[0, N)`` then up rows ``[N, 2N)``.
        w2: ``[E, K, N]`` fp8.
        topk_weights: ``[M, top_k]`` routing weights (applied after stage 2).
        topk_ids: ``[M, top_k]`` expert ids in ``[0, E)`` (int32 or int64).
        w13_scale, w2_scale: weight dequantisation scales (see below).
        fp8_dtype: ``torch.float8_e4m3fnuz`` (gfx942) or ``torch.float8_e4m3fn``
            (gfx950 / NVIDIA); defaults to ``w13.dtype``; weights must match it.
        activation: only ``"silu"`` (SwiGLU: ``silu(gate) * up``).
        weights_preshuffled: True when ``w13`` / ``w2`` already hold the (16, 16)
            pre-shuffled layout of ``shuffle_weight_fp8`` (what ATOM's CK weight
            shuffle produces); False shuffles them on every call (slow, a copy of
            all expert weights: for tests and debugging).
        block_m: sorting / GEMM row block (16..256, multiple of 16); by default
            16, 32 or 64 from the average number of rows per expert.
        stage2_mode: ``"reduce"``: stage 2 writes one row per (token, slot) and
            a torch sum over top-k follows (float32); ``"atomic"``: stage 2
            accumulates into a zeroed float32 ``[M, K]`` buffer with atomics.
        tile_n1, tile_k1, tile_n2, tile_k2: GEMM tile overrides.

    Supported quantisation (anything else raises ``ValueError``):
        * weights fp8 e4m3 (fnuz or fn) with per-output-channel scales:
          ``w13_scale`` ``[E, 2N]`` or ``[E, 2N, 1]``, ``w2_scale`` ``[E, K]`` or
          ``[E, K, 1]``;
        * per-tensor weight scales (``[E]`` / ``[E, 1]``, and ``[E, 2]`` for
          separate w1 / w3 scales), broadcast to per-output-channel scales;
        * activations: dynamic per-token FP8 quantisation (computed here, for the
          input and again for the stage-1 output, one scale per (token, slot)).
        Not supported: block scales (e.g. ``[E, 2N/128, K/128]``), static input
        scales, int8 / int4 / MXFP4 weights, non-SiLU activations, expert
        parallel masks.

    Raises:
        RuntimeError: FlyDSL's MoE kernels are not importable.
        ValueError: unsupported dtype, shape or quantisation mode.
    """
    if fp8_dtype is None:
        fp8_dtype = w13.dtype
    _check_fp8_dtype(fp8_dtype)
    if w13.dtype != fp8_dtype or w2.dtype != fp8_dtype:
        raise ValueError(
            f"w13 ({w13.dtype}) and w2 ({w2.dtype}) must both be {fp8_dtype}"
        )
    if activation != "silu":
        raise ValueError(
            f"flydsl_fp8_moe supports activation='silu' only, got {activation!r}"
        )
    out_dtype = hidden_states.dtype
    if out_dtype not in _OUT_DTYPE_NAMES:
        raise ValueError(
            f"hidden_states must be bfloat16 or float16, got {hidden_states.dtype}"
        )
    if stage2_mode not in ("reduce", "atomic"):
        raise ValueError(
            f"stage2_mode must be 'reduce' or 'atomic', got {stage2_mode!r}"
        )
    if hidden_states.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError(
            f"expected hidden_states [M, K], w13 [E, 2N, K], w2 [E, K, N]; got "
            f"{tuple(hidden_states.shape)}, {tuple(w13.shape)}, {tuple(w2.shape)}"
        )
    num_tokens, hidden_size = hidden_states.shape
    num_experts, two_n, k13 = w13.shape
    inter = two_n // 2
    if (
        two_n % 2
        or k13 != hidden_size
        or tuple(w2.shape) != (num_experts, hidden_size, inter)
    ):
        raise ValueError(
            f"inconsistent shapes: hidden_states {tuple(hidden_states.shape)}, "
            f"w13 {tuple(w13.shape)} (want [E, 2N, {hidden_size}]), "
            f"w2 {tuple(w2.shape)} (want [E, {hidden_size}, N])"
        )
    if topk_ids.dim() != 2 or topk_ids.shape[0] != num_tokens:
        raise ValueError(
            f"topk_ids must be [{num_tokens}, top_k], got {tuple(topk_ids.shape)}"
        )
    top_k = topk_ids.shape[1]

    tiles = _tiles(hidden_size, inter)
    for key, value in (
        ("tile_n1", tile_n1),
        ("tile_k1", tile_k1),
        ("tile_n2", tile_n2),
        ("tile_k2", tile_k2),
    ):
        if value is not None:
            tiles[key] = int(value)
    if block_m is None:
        block_m = _default_block_m(num_tokens, top_k, num_experts)
    problem = _shape_problem(hidden_size, inter, block_m, **tiles)
    if problem is not None:
        raise ValueError(f"flydsl_fp8_moe: unsupported shape: {problem}")

    w13_scale_flat = _channel_scale(w13_scale, "w13_scale", num_experts, two_n, split=2)
    w2_scale_flat = _channel_scale(
        w2_scale, "w2_scale", num_experts, hidden_size, split=1
    )

    kernels = _require_flydsl()

    if num_tokens == 0:
        return torch.empty_like(hidden_states)

    if not weights_preshuffled:
        w13 = shuffle_weight_fp8(w13)
        w2 = shuffle_weight_fp8(w2)
    w13_flat = w13.contiguous().view(-1)
    w2_flat = w2.contiguous().view(-1)

    routing = moe_sorting_torch(topk_ids, topk_weights, num_experts, block_m)
    num_blocks = routing.sorted_expert_ids.numel()
    num_valid = routing.num_valid_ids[:1]
    stream = _current_stream(hidden_states.device)
    out_name = _OUT_DTYPE_NAMES[out_dtype]

    # Stage 1: gate/up GEMM + SiLU * up -> [M, top_k, N].
    x_q, x_scale = per_token_quant_fp8(hidden_states, fp8_dtype)
    stage1 = kernels.compile_moe_gemm1(
        model_dim=hidden_size,
        inter_dim=inter,
        experts=num_experts,
        topk=top_k,
        tile_m=block_m,
        tile_n=tiles["tile_n1"],
        tile_k=tiles["tile_k1"],
        doweight_stage1=False,
        out_dtype=out_name,
        in_dtype="fp8",
    )
    inter_out = torch.empty(
        (num_tokens, top_k, inter), dtype=out_dtype, device=hidden_states.device
    )
    stage1(
        inter_out,
        x_q.view(-1),
        w13_flat,
        x_scale.view(-1),
        w13_scale_flat,
        routing.sorted_token_ids,
        routing.sorted_expert_ids,
        routing.sorted_weights,
        num_valid,
        num_tokens,
        inter,
        hidden_size,
        num_blocks,
        stream,
    )

    # Stage 2: down GEMM * routing weight, summed over top-k.
    a2_q, a2_scale = per_token_quant_fp8(
        inter_out.view(num_tokens * top_k, inter), fp8_dtype
    )
    accumulate = stage2_mode == "atomic"
    stage2 = kernels.compile_moe_gemm2(
        model_dim=hidden_size,
        inter_dim=inter,
        experts=num_experts,
        topk=top_k,
        tile_m=block_m,
        tile_n=tiles["tile_n2"],
        tile_k=tiles["tile_k2"],
        doweight_stage2=True,
        out_dtype="f32" if accumulate else out_name,
        accumulate=accumulate,
        in_dtype="fp8",
    )
    if accumulate:
        out2 = torch.zeros(
            (num_tokens, hidden_size), dtype=torch.float32, device=hidden_states.device
        )
    else:
        out2 = torch.empty(
            (num_tokens * top_k, hidden_size),
            dtype=out_dtype,
            device=hidden_states.device,
        )
    stage2(
        out2,
        a2_q.view(-1),
        w2_flat,
        a2_scale.view(-1),
        w2_scale_flat,
        routing.sorted_token_ids,
        routing.sorted_expert_ids,
        routing.sorted_weights,
        num_valid,
        num_tokens,
        hidden_size,
        inter,
        num_blocks,
        stream,
    )
    if accumulate:
        return out2.to(out_dtype)
    return (
        out2.view(num_tokens, top_k, hidden_size)
        .sum(dim=1, dtype=torch.float32)
        .to(out_dtype)
    )
