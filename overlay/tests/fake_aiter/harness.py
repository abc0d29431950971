# SPDX-License-Identifier: MIT
"""Drive an ATOM attention module (original or patched) on tiny CPU tensors
under the fake AITER, so that tests can look at which kernels it called."""

from __future__ import annotations

import types

import torch

from .atom_stubs import CONFIG


class Rope:
    """What the attention modules read of a rotary embedding."""

    is_neox_style = True

    def __init__(self, head_dim: int, positions: int = 64):
        self.cos_cache = torch.ones(positions, head_dim // 2)
        self.sin_cache = torch.zeros(positions, head_dim // 2)
        self.cos_sin_cache = torch.ones(positions, head_dim)

    def __call__(self, position, q, k):
        return q, k


def mha_forward(
    module,
    *,
    prefill: bool,
    head_dim: int = 128,
    sliding_window: int | None = None,
    kv_dtype: str = "bf16",
    block_size: int = 16,
    max_seqlen_q: int = 1,
    seqlens=(3, 5),
    num_heads: int = 4,
    num_kv_heads: int = 2,
):
    """One ``Attention.forward`` of ``module`` (an attention_mha module object)."""
    from atom.utils.forward_context import AttentionMetaData

    CONFIG.kv_cache_block_size = block_size
    module.get_current_atom_config = lambda: CONFIG
    bs = len(seqlens)
    q_lens = list(seqlens) if prefill else [max_seqlen_q] * bs
    tokens = sum(q_lens)
    cu_q = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(seqlens).cumsum(0)), dtype=torch.int32)
    num_blocks = 8
    x = 8
    cache_dtype = torch.bfloat16 if kv_dtype == "bf16" else torch.float8_e4m3fnuz
    layer = types.SimpleNamespace(
        k_cache=torch.zeros(
            num_blocks, num_kv_heads, head_dim // x, block_size, x, dtype=cache_dtype
        ),
        v_cache=torch.zeros(
            num_blocks, num_kv_heads, head_dim, block_size, dtype=cache_dtype
        ),
        k_scale=torch.zeros(num_blocks, num_kv_heads, block_size),
        v_scale=torch.zeros(num_blocks, num_kv_heads, block_size),
    )
    metadata = AttentionMetaData(
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max(q_lens),
        max_seqlen_k=max(seqlens),
        slot_mapping=torch.arange(tokens, dtype=torch.int64),
        context_lens=torch.tensor(seqlens, dtype=torch.int32),
        block_tables=torch.arange(bs * 2, dtype=torch.int32).view(bs, 2),
        kv_indptr=torch.arange(bs + 1, dtype=torch.int32),
        kv_indices=torch.arange(bs, dtype=torch.int32),
    )
    fwd_ctx = types.SimpleNamespace(
        context=types.SimpleNamespace(is_dummy_run=False, is_prefill=prefill),
        attn_metadata=metadata,
        kv_cache_data={"layer_0": layer},
    )
    module.get_forward_context = lambda: fwd_ctx
    attn = module.Attention(
        num_heads,
        head_dim,
        head_dim**-0.5,
        num_kv_heads,
        kv_cache_dtype=kv_dtype,
        layer_num=0,
        sliding_window=sliding_window,
        rotary_emb=Rope(head_dim),
    )
    q = torch.randn(tokens, num_heads * head_dim, dtype=torch.bfloat16)
    k = torch.randn(tokens, num_kv_heads * head_dim, dtype=torch.bfloat16)
    v = torch.randn(tokens, num_kv_heads * head_dim, dtype=torch.bfloat16)
    out = attn(q, k, v, torch.arange(tokens))
    return attn, layer, metadata, out


MLA_DIMS = {"heads": 2, "nope": 16, "rope": 8, "v": 16, "lora": 32}


def mla_attention(module, kv_dtype: str = "bf16"):
    """A small ``MLAAttention`` of ``module`` (an attention_mla module object)."""
    d = MLA_DIMS
    modules = module.MLAModules(
        q_lora_rank=None,
        kv_lora_rank=d["lora"],
        qk_nope_head_dim=d["nope"],
        qk_rope_head_dim=d["rope"],
        qk_head_dim=d["nope"] + d["rope"],
        v_head_dim=d["v"],
        rotary_emb=None,
        q_proj=None,
        kv_b_proj=torch.nn.Linear(
            d["lora"], d["heads"] * (d["nope"] + d["v"]), bias=False
        ),
        o_proj=torch.nn.Identity(),
        indexer=None,
    )
    attn = module.MLAAttention(
        d["heads"],
        d["nope"] + d["rope"],
        0.3,
        1,
        kv_dtype,
        mla_modules=modules,
        dtype=torch.float32,
    )
    attn._v_up_proj_and_o_proj = lambda o: o
    return attn


def mla_prefill_mha(module, lens=(4, 1, 3), kv_dtype="bf16"):
    d = MLA_DIMS
    attn = mla_attention(module, kv_dtype)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    meta = types.SimpleNamespace(
        cu_seqlens_q=cu,
        cu_seqlens_k=cu,
        max_seqlen_q=max(lens),
        max_seqlen_k=max(lens),
        min_seqlen_q=0,
        dropout_p=0.0,
    )
    t = sum(lens)
    return attn._forward_prefill_mha(
        torch.randn(t, d["heads"], d["nope"] + d["rope"]),
        torch.randn(t, d["lora"]),
        torch.randn(t, d["rope"]),
        torch.empty(0),
        meta,
    )


def mla_decode(module, max_seqlen_q=1, kv_dtype="bf16", batch=3):
    d = MLA_DIMS
    attn = mla_attention(module, kv_dtype)
    meta = types.SimpleNamespace(
        kv_indptr=torch.tensor([0, 2, 5, 6], dtype=torch.int32)[: batch + 1],
        kv_indices=torch.arange(6, dtype=torch.int32),
        cu_seqlens_q=torch.arange(batch + 1, dtype=torch.int32) * max_seqlen_q,
        kv_last_page_lens=torch.ones(batch, dtype=torch.int32),
        max_seqlen_q=max_seqlen_q,
        work_meta_data=None,
        work_indptr=None,
        work_info_set=None,
        reduce_indptr=None,
        reduce_final_map=None,
        reduce_partial_map=None,
    )
    dtype = torch.float8_e4m3fnuz if kv_dtype == "fp8" else torch.bfloat16
    q = torch.randn(batch * max_seqlen_q, d["heads"], d["lora"] + d["rope"]).to(dtype)
    cache = torch.zeros(16, 1, d["lora"] + d["rope"]).to(dtype)
    return attn._forward_decode(q, cache, meta)


def mla_prefill_paged(module, max_seqlen_q=1, kv_dtype="bf16", batch=3):
    """``MLAAttention._forward_prefill_mla``: prefill over the paged KV cache
    (``mla_decode_fwd`` / ``mla_prefill_fwd``), ``max_seqlen_q`` query tokens a
    sequence; Q and the cache in FP8 with an FP8 cache, as ATOM quantises them,
    else in the model dtype (ATOM's ``q_out`` and cache dtype without FP8)."""
    d = MLA_DIMS
    attn = mla_attention(module, kv_dtype)
    meta = types.SimpleNamespace(
        kv_indptr=torch.tensor([0, 2, 5, 6], dtype=torch.int32)[: batch + 1],
        kv_indices=torch.arange(6, dtype=torch.int32),
        cu_seqlens_q=torch.arange(batch + 1, dtype=torch.int32) * max_seqlen_q,
        kv_last_page_lens=torch.ones(batch, dtype=torch.int32),
        max_seqlen_q=max_seqlen_q,
    )
    dtype = torch.float8_e4m3fnuz if kv_dtype == "fp8" else attn.dtype
    q = torch.randn(batch * max_seqlen_q, d["heads"], d["lora"] + d["rope"]).to(dtype)
    cache = torch.randn(16, 1, d["lora"] + d["rope"]).to(dtype)
    return attn._forward_prefill_mla(q, cache, meta)
