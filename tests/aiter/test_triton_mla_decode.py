"""AITER's Triton MLA decode (``decode_attention_fwd_grouped_rope``), called as
series 3 calls it, against the ``mla_decode_fwd`` stand-in; and the issue's finding
#2: with an FP8 latent cache and a bf16 query it does not compile.

The bf16 query of finding #2 is what series 3 passes; the numeric check runs in fp16
(the Triton 3.9 interpreter computes bf16 arithmetic on the raw bits, see
test_contracts.py).
"""

from __future__ import annotations

import pytest
import torch

from .overlay_modules import contracts

pytestmark = pytest.mark.aiter

LORA, ROPE, HEADS, SPLITS = 64, 16, 4, 2


def _case(dtype, g):
    lens = [3, 9]
    total = sum(lens)
    kv = torch.randn(total + 2, 1, LORA + ROPE, generator=g).to(dtype)
    pages = torch.randperm(total + 2, generator=g)[:total].to(torch.int32)
    kv_indptr = torch.tensor([0, lens[0], total], dtype=torch.int32)
    return kv, pages, kv_indptr


def _triton_decode(aiter, q, kv, kv_indptr, pages, scale):
    """As series 3's ``_forward_decode_triton``: V is the latent slice of the cache,
    no rope inside the kernel."""
    mla = aiter("aiter.ops.triton.attention.mla_decode_rope")
    o = torch.empty(q.shape[0], HEADS, LORA, dtype=q.dtype)
    logits = torch.empty(q.shape[0], HEADS, SPLITS, LORA + 1)
    mla.decode_attention_fwd_grouped_rope(
        q, kv, kv[..., :LORA], o, kv_indptr, pages, None, LORA, ROPE, None, None,
        logits, SPLITS, scale, logit_cap=0.0, use_rope=False, is_neox_style=False,
    )  # fmt: skip
    return o


def test_triton_mla_decode_agrees_with_mla_decode_fwd(aiter):
    g = torch.Generator().manual_seed(1)
    kv, pages, kv_indptr = _case(torch.float16, g)
    q = torch.randn(2, HEADS, LORA + ROPE, generator=g).half()
    got = _triton_decode(aiter, q, kv, kv_indptr, pages, 0.1)
    want = torch.empty_like(got)
    qo = torch.tensor([0, 1, 2], dtype=torch.int32)
    contracts().mla_decode_fwd(
        q, kv[:, None], want, qo, kv_indptr, pages, torch.ones(2, dtype=torch.int32),
        1, sm_scale=0.1,
    )  # fmt: skip
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1e-2)


def test_triton_mla_decode_rejects_an_fp8_cache_with_a_bf16_query(aiter):
    """Issue 19, finding #2, at kernel level: an FP8 latent cache reaches ``tl.dot``
    against the bf16 query and Triton refuses it. AITER's kernel stays so; series 3
    dequantises the query and the cache rows before calling it
    (test_mla_layer.py: the FP8 decode cases)."""
    g = torch.Generator().manual_seed(2)
    kv, pages, kv_indptr = _case(torch.bfloat16, g)
    kv = kv.float().to(torch.float8_e4m3fnuz)
    q = torch.randn(2, HEADS, LORA + ROPE, generator=g).bfloat16()
    with pytest.raises(Exception, match="Unsupported rhs dtype"):
        _triton_decode(aiter, q, kv, kv_indptr, pages, 0.1)
