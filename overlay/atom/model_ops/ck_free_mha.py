# SPDX-License-Identifier: MIT
"""The CK-free MHA path's prefill block table (``attention_mha.py``), built on the
device without host syncs."""

import torch


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
