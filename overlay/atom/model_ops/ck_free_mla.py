# SPDX-License-Identifier: MIT
"""The CK-free MLA path's tensor helpers, without host syncs or loops over
sequences: the batched SDPA prefill and the dequantisation for
``mla_prefill_fwd`` (``attention_mla.py``), and the paged KV metadata of a
prefill batch (``attentions/aiter_mla.py``)."""

import itertools

import numpy as np
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


def to_model_dtype(
    x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor
) -> torch.Tensor:
    """``x`` as ``dtype`` for ``mla_prefill_fwd``, which takes no FP8 scales:
    unchanged when it already is, dequantised by its per-tensor ``scale`` when
    it is FP8, plainly cast otherwise."""
    if x.dtype == dtype:
        return x
    y = x.to(dtype)
    if x.dtype.is_floating_point and x.element_size() == 1:
        y.mul_(scale.to(device=y.device, dtype=dtype))
    return y


def block_table_slots(
    block_tables: torch.Tensor, context_lens: torch.Tensor, ratio: int
) -> torch.Tensor:
    """Block tables of ``ratio``-token blocks as tables of single-token slots.

    Row b, column t is ``block_tables[b, t // ratio] * ratio + t % ratio`` for
    ``t < context_lens[b]`` and -1 past the end of the sequence (the layout of
    ``block_table_convert_triton``). Shape ``[B, W * ratio]``."""
    width = block_tables.shape[1] * ratio
    t = torch.arange(width, device=block_tables.device)
    slots = block_tables.index_select(1, t // ratio) * ratio + (t % ratio).to(
        block_tables.dtype
    )
    valid = t.unsqueeze(0) < context_lens.unsqueeze(1)
    return torch.where(valid, slots, torch.full_like(slots, -1))


def paged_kv_indptr(context_lens: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[: B + 1] = [0, cumsum(context_lens)]`` (pages of one token)."""
    bs = context_lens.shape[0]
    out[0] = 0
    torch.cumsum(context_lens, 0, out=out[1 : bs + 1])
    return out[: bs + 1]


def paged_kv_indices(
    slot_tables: torch.Tensor,
    kv_indptr: torch.Tensor,
    total: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out[:total]``: the slots of all sequences, one after the other.

    Entry p belongs to sequence b with ``kv_indptr[b] <= p < kv_indptr[b + 1]``
    and is ``slot_tables[b, p - kv_indptr[b]]``. ``total`` (the sum of the
    context lengths) is a host integer, known to the builder."""
    p = torch.arange(total, device=slot_tables.device)
    seq = torch.searchsorted(kv_indptr[1:], p.to(kv_indptr.dtype), right=True)
    col = p - kv_indptr.index_select(0, seq).to(p.dtype)
    out[:total] = slot_tables[seq, col].to(out.dtype)
    return out[:total]


def fill_block_tables(dst: np.ndarray, block_tables) -> None:
    """Rows of ``dst`` = the (ragged) ``block_tables``, zero padded, in one
    scatter rather than a loop over sequences."""
    lens = np.fromiter((len(bt) for bt in block_tables), dtype=np.int64)
    bs = lens.shape[0]
    dst[:bs] = 0
    if not lens.sum():
        return
    flat = np.fromiter(
        itertools.chain.from_iterable(block_tables), dtype=dst.dtype, count=lens.sum()
    )
    rows = np.repeat(np.arange(bs), lens)
    cols = np.arange(flat.shape[0]) - np.repeat(np.cumsum(lens) - lens, lens)
    dst[rows, cols] = flat
