# SPDX-License-Identifier: MIT
"""The CK-free MLA path's tensor helpers (``attention_mla.py``), without host
syncs or loops over sequences: the batched SDPA prefill, and the FP8 latent
cache and query dequantised for AITER's Triton MLA decode."""

import torch


def varlen_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """Causal attention over a ragged batch, all sequences in one SDPA call.

    ``q`` is ``[total_q, H, D]``, ``k`` ``[total_k, H, D]``, ``v`` ``[total_k, H, Dv]``;
    query i of a sequence sees its keys up to ``i + len_k - len_q`` (bottom-right
    causal, as flash_attn_varlen_func). The batch is scattered into padded
    ``[B, H, L, D]`` tensors with a block-diagonal causal mask; no host syncs and
    no loop over sequences (``max_seqlen_*`` are host integers)."""
    device = q.device
    num_seqs = cu_seqlens_q.shape[0] - 1
    lq, lk = max(int(max_seqlen_q), 1), max(int(max_seqlen_k), 1)
    cu_q, cu_k = cu_seqlens_q.long(), cu_seqlens_k.long()
    len_q, len_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]

    def scatter(x, cu, width):
        seq = torch.searchsorted(
            cu[1:], torch.arange(x.shape[0], device=device), right=True
        )
        pos = torch.arange(x.shape[0], device=device) - cu[seq]
        out = x.new_zeros(num_seqs, width, *x.shape[1:])
        out[seq, pos] = x
        return out.transpose(1, 2), seq, pos

    qp, q_seq, q_pos = scatter(q, cu_q, lq)
    kp, _, _ = scatter(k, cu_k, lk)
    vp, _, _ = scatter(v, cu_k, lk)
    rows = torch.arange(lq, device=device).view(1, lq, 1)
    cols = torch.arange(lk, device=device).view(1, 1, lk)
    shift = (len_k - len_q).view(-1, 1, 1)
    mask = (cols < len_k.view(-1, 1, 1)) & (cols <= rows + shift)
    mask = mask | (rows >= len_q.view(-1, 1, 1))  # padded query rows: any finite value
    out = torch.nn.functional.scaled_dot_product_attention(
        qp, kp, vp, attn_mask=mask.unsqueeze(1), scale=softmax_scale
    )
    return out.transpose(1, 2)[q_seq, q_pos]


def dequantised(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
    """``x`` in ``dtype``: an FP8 ``x`` times its per-tensor ``scale`` (ATOM's
    FP8 MLA cache and query hold ``value / scale``: ``concat_and_cache_mla`` and
    ``fused_qk_rope_concat_and_cache_mla`` quantise with ``self._k_scale`` and
    ``self._q_scale``); any other ``x`` cast (unchanged when already ``dtype``)."""
    if x.dtype == dtype:
        return x
    y = x.to(dtype)
    if x.element_size() == 1 and x.dtype.is_floating_point:
        y.mul_(scale.to(device=y.device, dtype=dtype))
    return y


def dequantised_kv_rows(
    kv_buffer: torch.Tensor,
    kv_indices: torch.Tensor,
    scale: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, indices)``: the latent cache ``kv_buffer`` (``[num_rows, ...]``)
    in ``dtype``, for a kernel that reads row ``indices[p]`` where it read
    ``kv_buffer[kv_indices[p]]``.

    AITER's Triton MLA decode has no FP8 cache path (its ``tl.dot`` refuses an FP8
    cache against a bf16 query, and it takes no KV scale), so an FP8 cache is
    dequantised first. When ``kv_indices`` is shorter than the cache, only the
    rows it names are gathered (in its order; ``indices`` becomes ``0, 1, ...``),
    otherwise the whole cache is dequantised and the indices stay. Both sizes are
    tensor shapes, not values: no host sync, and the same kernels on every replay
    of a CUDA graph. Entries of ``kv_indices`` past the batch's last one (stale or
    unset) are clamped into the cache; the kernel never reads their rows."""
    if kv_buffer.dtype == dtype:
        return kv_buffer, kv_indices
    num_rows = kv_buffer.shape[0]
    if kv_indices.numel() >= num_rows:
        return dequantised(kv_buffer, scale, dtype), kv_indices
    rows = kv_buffer.index_select(0, kv_indices.long().clamp(0, num_rows - 1))
    positions = torch.arange(
        kv_indices.numel(), dtype=kv_indices.dtype, device=kv_indices.device
    )
    return dequantised(rows, scale, dtype), positions
