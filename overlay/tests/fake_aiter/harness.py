# SPDX-License-Identifier: MIT
"""Drive ATOM modules (original or patched) on tiny CPU tensors under the fake
AITER, so that tests can look at which kernels they called: the attention
modules (MHA, MLA) and the MoE layer methods of ``atom/model_ops/moe.py``."""

from __future__ import annotations

import importlib
import sys
import types

import torch

from . import FakeAiter, install
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
    per_seq = -(-max(seqlens) // block_size)  # blocks a sequence's context fills
    num_blocks = max(8, bs * per_seq)
    cache_dtype = torch.bfloat16 if kv_dtype == "bf16" else torch.float8_e4m3fnuz
    x = 16 // cache_dtype.itemsize  # as ATOM's model_runner allocates it
    # per-token scale buffers only with an FP8 cache (model_runner.py:1087-1092)
    scales = kv_dtype != "bf16"
    layer = types.SimpleNamespace(
        k_cache=torch.zeros(
            num_blocks, num_kv_heads, head_dim // x, block_size, x, dtype=cache_dtype
        ),
        v_cache=torch.zeros(
            num_blocks, num_kv_heads, head_dim, block_size, dtype=cache_dtype
        ),
        k_scale=torch.zeros(num_blocks, num_kv_heads, block_size) if scales else None,
        v_scale=torch.zeros(num_blocks, num_kv_heads, block_size) if scales else None,
    )
    metadata = AttentionMetaData(
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max(q_lens),
        max_seqlen_k=max(seqlens),
        slot_mapping=torch.arange(tokens, dtype=torch.int64),
        context_lens=torch.tensor(seqlens, dtype=torch.int32),
        block_tables=torch.arange(bs * per_seq, dtype=torch.int32).view(bs, per_seq),
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


def mla_decode_metadata(
    batch=3, max_seqlen_q=1, kv_indptr=None, kv_indices=None, device=None
):
    """Decode metadata of ``batch`` sequences: by default (``batch`` ≤ 3) over a
    6-page KV cache, or over the pages ``kv_indptr``/``kv_indices`` give."""
    if kv_indptr is None:
        kv_indptr = torch.tensor([0, 2, 5, 6], dtype=torch.int32)[: batch + 1]
        kv_indices = torch.arange(6, dtype=torch.int32)
    return types.SimpleNamespace(
        kv_indptr=kv_indptr,
        kv_indices=kv_indices,
        cu_seqlens_q=torch.arange(batch + 1, dtype=torch.int32, device=device)
        * max_seqlen_q,
        kv_last_page_lens=torch.ones(batch, dtype=torch.int32, device=device),
        max_seqlen_q=max_seqlen_q,
        work_meta_data=None,
        work_indptr=None,
        work_info_set=None,
        reduce_indptr=None,
        reduce_final_map=None,
        reduce_partial_map=None,
    )


def mla_decode(module, max_seqlen_q=1, kv_dtype="bf16", batch=3):
    d = MLA_DIMS
    attn = mla_attention(module, kv_dtype)
    meta = mla_decode_metadata(batch, max_seqlen_q)
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


# -- MoE (atom/model_ops/moe.py) ---------------------------------------------


def register_custom_ops(fake: FakeAiter, monkeypatch=None) -> None:
    """ATOM registers its MoE wrappers as ``torch.ops.aiter.*``; make
    ``direct_register_custom_op`` put a recording op in the fake's
    ``torch.ops.aiter``."""
    from atom.utils import custom_register

    def direct_register_custom_op(op_name, op_func, **kwargs):
        setattr(
            fake.torch_ops, op_name, fake._entry(f"torch.ops.aiter.{op_name}", op_func)
        )

    if monkeypatch is not None:
        monkeypatch.setattr(
            custom_register, "direct_register_custom_op", direct_register_custom_op
        )
    else:
        custom_register.direct_register_custom_op = direct_register_custom_op


def install_fake_flydsl(monkeypatch=None) -> types.ModuleType:
    """An importable ``kernels.moe_gemm_2stage`` (FlyDSL's MoE GEMM builders)."""
    kernels = types.ModuleType("kernels")
    kernels.__path__ = []
    gemm = types.ModuleType("kernels.moe_gemm_2stage")
    gemm.compile_moe_gemm1 = gemm.compile_moe_gemm2 = lambda **kwargs: None
    for name, module in (("kernels", kernels), ("kernels.moe_gemm_2stage", gemm)):
        if monkeypatch is not None:
            monkeypatch.setitem(sys.modules, name, module)
        else:
            sys.modules[name] = module
    return gemm


def load_moe(monkeypatch, *, ck=True, env=None, flydsl=False, interpret=True):
    """A fresh ``atom.model_ops.moe`` under a fresh fake AITER (``install``:
    ``fake_aiter.uninstall()`` takes it away again).

    ATOM's tests/conftest.py stubs ``atom.config`` and ``atom.utils.custom_register``;
    the MoE module needs the real ones, so every ``atom.*`` module is imported
    anew here (``monkeypatch`` puts the previous ones back afterwards).
    ``interpret`` sets ``TRITON_INTERPRET`` for the Triton MoE kernels (read when
    they are imported); keep it on within one process: kernels built for the
    interpreter and for a GPU do not mix. Returns ``(moe, fake)``.
    """
    for name in ("ATOM_CK_FREE", "ATOM_USE_FLYDSL_MOE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
    fake = install(ck=ck)
    for name in [n for n in sys.modules if n.startswith(("atom.", "kernels"))]:
        monkeypatch.delitem(sys.modules, name)
    if flydsl:
        install_fake_flydsl(monkeypatch)
    importlib.import_module("atom.utils.custom_register")
    register_custom_ops(fake, monkeypatch)
    moe = importlib.import_module("atom.model_ops.moe")
    return moe, fake


def make_moe_layer(method, E=4, H=256, N=128, seed=0):
    """A layer with the method's weights, filled with small random FP8 values
    and scales around 1 (an FP8 checkpoint as loaded)."""
    layer = torch.nn.Module()
    method.create_weights(layer, E, H, N, torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    layer.local_num_experts = E
    layer.intermediate_size_per_partition = N
    layer.num_fused_shared_experts = 0
    layer.routed_scaling_factor = 1.0
    fp8 = layer.w13_weight.dtype
    layer.w13_weight.data = (torch.randn(E, 2 * N, H, generator=g) * 0.5).to(fp8)
    layer.w2_weight.data = (torch.randn(E, H, N, generator=g) * 0.5).to(fp8)
    for name in ("w13_weight_scale", "w2_weight_scale"):
        param = getattr(layer, name)
        param.data = torch.rand(param.shape, generator=g) * 0.02 + 0.01
    return layer


def fixed_routing(moe, monkeypatch, weights, ids):
    """``FusedMoE.select_experts`` returns the given routing."""

    def route(*args, **kwargs):
        return weights, ids

    monkeypatch.setattr(moe.FusedMoE, "select_experts", staticmethod(route))
