# SPDX-License-Identifier: MIT
"""The CK-free MHA path's tensor helpers (``attention_mha.py``): per-token KV
scales for ASM paged attention, and the prefill's block-size-1 block table.
Both run on the device without host syncs."""

import torch


def fill_per_token_kv_scale(
    scale_buffer: torch.Tensor, slot_mapping: torch.Tensor, scale: torch.Tensor
) -> None:
    """Write the per-tensor ``scale`` into the per-token scale buffer
    ``[num_blocks, num_kv_heads, block_size]`` at every slot just written, so that
    ASM paged attention dequantises what the Triton cache kernel quantised with
    one scale. On the device, no host sync; padded slots (-1) rewrite slot 0 with
    the same uniform scale."""
    block_size = scale_buffer.shape[-1]
    slots = slot_mapping.flatten().long().clamp(min=0)
    scale_buffer[slots // block_size, :, slots % block_size] = scale.to(
        device=scale_buffer.device, dtype=scale_buffer.dtype
    )


def prefill_block_table(cu_seqlens_q: torch.Tensor, max_seqlen_q: int) -> torch.Tensor:
    """Block table of the prefill's own K/V seen as a cache of block size 1: row b
    holds the token indices of sequence b. Built on ``cu_seqlens_q``'s device
    without host syncs; columns past a sequence's end repeat an in-range index."""
    starts = cu_seqlens_q[:-1].to(torch.int32).unsqueeze(1)
    offsets = torch.arange(
        max(int(max_seqlen_q), 1), dtype=torch.int32, device=cu_seqlens_q.device
    )
    last = (cu_seqlens_q[-1:].to(torch.int32) - 1).clamp(min=0)
    return torch.minimum(starts + offsets, last)
