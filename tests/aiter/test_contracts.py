"""The stand-ins of overlay/tests/fake_aiter/contracts.py, checked two ways.

Against AITER's own Triton kernels where AITER has a Triton twin (run under the
interpreter at small sizes, from the AITER source of conftest.py), and against plain
torch references written from the definitions (reference.py). Also the issue's
finding #1: the cache AITER's Triton writer leaves (``flash_layout=False``) is not the
layout ASM paged attention reads.

AITER's kernels run here in fp16 where the model runs bf16: the Triton 3.9
interpreter computes bf16 arithmetic on the raw bits (bf16 ``a * b``, ``a + b`` and
``tl.dot`` come out as garbage, 1e8 and worse; fp16, fp32 and FP8 are right). The
layouts do not depend on it (``x`` is 8 for both 16-bit types).
"""

from __future__ import annotations

import math

import pytest
import torch

from .overlay_modules import contracts, kv_cache_asm, load_overlay
from .reference import attention, exact_fp8

pytestmark = pytest.mark.aiter

KV_HEADS, Q_HEADS, NUM_BLOCKS = 2, 4, 6
HALF = torch.float16  # the 16-bit type the interpreter computes right (docstring)


def _paged(lens, block_size, g):
    """Block tables (shuffled blocks) and each sequence's slots."""
    per_seq = NUM_BLOCKS // len(lens)
    table = torch.randperm(NUM_BLOCKS, generator=g).to(torch.int32)
    table = table.view(len(lens), per_seq)
    slots = []
    for s, n in enumerate(lens):
        pos = torch.arange(n)
        slots.append(table[s, pos // block_size].long() * block_size + pos % block_size)
    return table, slots


def _asm_caches(dtype, head, block_size):
    x = 16 // torch.empty(0, dtype=dtype).element_size()
    k = torch.zeros(NUM_BLOCKS, KV_HEADS, head // x, block_size, x, dtype=dtype)
    v = torch.zeros(NUM_BLOCKS, KV_HEADS, head, block_size, dtype=dtype)
    return k, v


def _rope_inputs(t, head, g):
    max_pos = 64
    freqs = torch.rand(max_pos, head // 2, generator=g) * math.pi
    pos = torch.randint(0, max_pos, (t,), generator=g)
    return pos, freqs.cos().to(HALF), freqs.sin().to(HALF)


def _triton_rope_and_cache(aiter, q, k, v, k_cache, v_cache, slots, g, scale=None):
    """AITER's ``fused_qk_rope_reshape_and_cache(flash_layout=False)`` as series 2
    calls it; returns the rotated k. GPT-J style rope: the style does not touch the
    layout, and NeoX's second ``tl.flip`` is what is slow in the interpreter."""
    mod = aiter("aiter.ops.triton.fusions.fused_kv_cache")
    pos, cos, sin = _rope_inputs(q.shape[0], q.shape[-1], g)
    one = torch.ones(1) if scale is None else scale
    _, k_out, _, _ = mod.fused_qk_rope_reshape_and_cache(
        q, k, v, k_cache, v_cache, slots, pos, cos, sin, one, one,
        False, flash_layout=False, apply_scale=scale is not None, offs=None,
        q_out=torch.empty_like(q), k_out=torch.empty_like(k), output_zeros=False,
    )  # fmt: skip
    return k_out


# -- the cache writers -------------------------------------------------------------


@pytest.mark.parametrize("head", [64, 128])
def test_triton_cache_writer_non_flash_layout_is_the_non_asm_contract(aiter, head):
    """AITER's Triton writer with ``flash_layout=False`` writes, byte for byte, what
    the ``reshape_and_cache(asm_layout=False)`` stand-in writes (K rotated by it)."""
    g = torch.Generator().manual_seed(head)
    t, bs = 7, 16
    q = torch.randn(t, Q_HEADS, head, generator=g).to(HALF)
    k, v = (torch.randn(t, KV_HEADS, head, generator=g).to(HALF) for _ in range(2))
    slots = torch.tensor([3, 17, 40, 41, 90, 5, 95])
    triton_k, triton_v = _asm_caches(HALF, head, bs)
    k_rot = _triton_rope_and_cache(aiter, q, k, v, triton_k, triton_v, slots, g)
    assert not torch.equal(k_rot, k)  # rope did something
    ours_k, ours_v = _asm_caches(HALF, head, bs)
    contracts().reshape_and_cache(
        k_rot, v, ours_k, ours_v, slots, "auto", asm_layout=False
    )
    assert torch.equal(triton_k, ours_k)
    assert torch.equal(triton_v, ours_v)


def _decode_outputs(cache_writer, head, block_size, g):
    """A bf16 cache of two sequences written by ``cache_writer(k, v, k_cache,
    v_cache, slots)``, decoded by the pa_fwd_asm stand-in; returns (out, want)."""
    lens = [2, 17]  # the second spans two blocks
    table, slots = _paged(lens, block_size, g)
    k_cache, v_cache = _asm_caches(HALF, head, block_size)
    keys, vals = [], []
    for s, n in enumerate(lens):
        k, v = (torch.randn(n, KV_HEADS, head, generator=g).to(HALF) for _ in "kv")
        keys.append(cache_writer(k, v, k_cache, v_cache, slots[s]))
        vals.append(v)
    q = torch.randn(len(lens), Q_HEADS, head, generator=g).to(HALF)
    ctx = torch.tensor(lens, dtype=torch.int32)
    out = contracts().pa_fwd_asm(q, k_cache, v_cache, table, ctx, table.stride(0))
    scale = 1 / math.sqrt(head)
    want = torch.cat(
        [attention(q[s : s + 1], keys[s], vals[s], scale) for s in range(len(lens))]
    )
    return out.double(), want


def test_triton_cache_writer_layout_is_not_what_asm_pa_reads(aiter):
    """Issue 19, finding #1 (a known bug of series 2, documented here): K/V written by
    AITER's Triton ``fused_qk_rope_reshape_and_cache(flash_layout=False)`` and read
    by ASM paged attention (its stand-in) in the ASM layout give a wrong answer; the
    same K/V written in the ASM layout by our kernel give the right one. Head 128,
    block 16, a 16-bit cache: the RFC's headline path (bf16 there, fp16 here)."""
    head, bs = 128, 16

    def triton_writer(k, v, k_cache, v_cache, slots):
        q = torch.zeros(k.shape[0], KV_HEADS, head).to(HALF)  # q is not under test
        return _triton_rope_and_cache(aiter, q, k, v, k_cache, v_cache, slots, g)

    def ours(k, v, k_cache, v_cache, slots):
        kv_cache_asm().reshape_and_cache_asm(k, v, k_cache, v_cache, slots)
        return k

    g = torch.Generator().manual_seed(19)
    out, want = _decode_outputs(triton_writer, head, bs, g)
    err = (out - want).abs().max().item()
    assert err > 0.1, f"the Triton-written cache decoded right ({err=:.3g}): fixed?"
    g = torch.Generator().manual_seed(19)
    out, want = _decode_outputs(ours, head, bs, g)
    torch.testing.assert_close(out, want, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fnuz, torch.float8_e4m3fn])
@pytest.mark.parametrize("block_size", [16, 32])
def test_fp8_v_layouts_coincide_only_at_block_16(aiter, dtype, block_size):
    """With an FP8 cache ``x`` is 16, so at block size 16 the ASM V layout
    ``[block/x, head, x]`` is ``[1, head, 16]``: the bytes AITER's Triton writer
    leaves (``[head, block]``) are the ASM layout's. At block 32 they are not. (V is
    not rotated, and exact data quantise without rounding.)"""
    g = torch.Generator().manual_seed(block_size)
    t, head = 5, 64
    q = torch.zeros(t, Q_HEADS, head).to(HALF)
    k = torch.randn(t, KV_HEADS, head, generator=g).to(HALF)
    v, scale = exact_fp8((t, KV_HEADS, head), dtype, False, g)
    v = v.to(HALF)
    slots = torch.tensor([3, 17, 40, 41, 90])
    triton_k, triton_v = _asm_caches(dtype, head, block_size)
    _triton_rope_and_cache(aiter, q, k, v, triton_k, triton_v, slots, g, scale)
    asm_k, asm_v = _asm_caches(dtype, head, block_size)
    contracts().reshape_and_cache(
        k, v, asm_k, asm_v, slots, "fp8", scale, scale, asm_layout=True
    )
    same = torch.equal(triton_v.view(torch.uint8), asm_v.view(torch.uint8))
    assert same == (block_size == 16)


@pytest.mark.parametrize("asm_layout", [True, False])
def test_pertoken_quant_round_trip(asm_layout):
    """Dequantising what ``reshape_and_cache_with_pertoken_quant`` stored (with the
    scales where its contract puts them) gives K/V back to FP8 precision."""
    g = torch.Generator().manual_seed(int(asm_layout))
    t, head, bs, dtype = 6, 64, 16, torch.float8_e4m3fnuz
    k, v = (torch.randn(t, KV_HEADS, head, generator=g).bfloat16() for _ in "kv")
    slots = torch.tensor([0, 5, 16, 33, 47, 80])
    k_cache, v_cache = _asm_caches(dtype, head, bs)
    if asm_layout:
        shape = (NUM_BLOCKS, KV_HEADS, bs)
    else:
        shape = (KV_HEADS, NUM_BLOCKS * bs)
    ks, vs = torch.zeros(shape), torch.zeros(shape)
    c = contracts()
    c.reshape_and_cache_with_pertoken_quant(
        k, v, k_cache, v_cache, ks, vs, slots, asm_layout
    )
    blk, off = slots // bs, slots % bs
    got_k = c.k_cache_view(k_cache).float()[blk, :, off]
    got_v = c.v_cache_view(v_cache, 16, head, asm_layout).float()[blk, :, off]
    if asm_layout:
        sk, sv = ks[blk, :, off], vs[blk, :, off]
    else:
        sk, sv = ks[:, slots].T, vs[:, slots].T
    torch.testing.assert_close(got_k * sk[..., None], k.float(), atol=0, rtol=0.07)
    torch.testing.assert_close(got_v * sv[..., None], v.float(), atol=0, rtol=0.07)


# -- paged decode ------------------------------------------------------------------


@pytest.mark.parametrize("fp8", [False, True], ids=["fp16", "fp8-per-token"])
def test_triton_paged_decode_agrees_with_pa_fwd_asm(aiter, fp8):
    """AITER's Triton ``paged_attention_decode`` over K/V laid out ``[blocks, heads,
    block, head]`` and the ``pa_fwd_asm`` stand-in over the same K/V in the ASM layout
    give the same output; FP8: the same bytes and the same per-token scales
    ``[blocks, heads, block]``, which both kernels document."""
    import triton.language as tl

    pa = aiter("aiter.ops.triton.attention.pa_decode")
    c = contracts()
    g = torch.Generator().manual_seed(3)
    head, bs, lens = 64, 16, [7, 30]
    dtype = torch.float8_e4m3fnuz if fp8 else HALF
    table, slots = _paged(lens, bs, g)
    asm_k, asm_v = _asm_caches(dtype, head, bs)
    ks, vs = (torch.ones(NUM_BLOCKS, KV_HEADS, bs) for _ in "kv")
    for s, n in enumerate(lens):
        k, v = (torch.randn(n, KV_HEADS, head, generator=g).to(HALF) for _ in "kv")
        if fp8:
            c.reshape_and_cache_with_pertoken_quant(
                k, v, asm_k, asm_v, ks, vs, slots[s], True
            )
        else:
            c.reshape_and_cache(k, v, asm_k, asm_v, slots[s], "auto", None, None, True)
    x = asm_k.shape[-1]
    plain_k = c.k_cache_view(asm_k)
    plain_v = c.v_cache_view(asm_v, x, head, asm_layout=True)
    q = torch.randn(len(lens), Q_HEADS, head, generator=g).to(HALF)
    ctx = torch.tensor(lens, dtype=torch.int32)
    want = torch.empty_like(q)
    pa.paged_attention_decode(
        want, q, plain_k, plain_v, ctx, table, 1 / math.sqrt(head), max(lens),
        tl.float16, ks if fp8 else torch.ones(1), vs if fp8 else torch.ones(1),
    )  # fmt: skip
    got = c.pa_fwd_asm(
        q, asm_k, asm_v, table, ctx, table.stride(0),
        K_QScale=ks if fp8 else None, V_QScale=vs if fp8 else None,
    )  # fmt: skip
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("fp8", [False, True], ids=["fp16", "fp8-per-tensor"])
def test_triton_paged_decode_agrees_with_pa_decode_gluon(aiter, fp8):
    """The ``pa_decode_gluon`` stand-in (the Gluon kernel is AMD-only) and AITER's
    Triton ``paged_attention_decode`` read the same non-ASM cache (K ``[blocks, heads,
    head // x, block, x]``, V ``[blocks, heads, head, block]``) with one per-tensor
    scale, as series 2's Triton paged attention hands it over, and agree."""
    import triton.language as tl

    pa = aiter("aiter.ops.triton.attention.pa_decode")
    c = contracts()
    g = torch.Generator().manual_seed(4)
    head, bs, lens = 64, 16, [9, 21]
    dtype = torch.float8_e4m3fnuz if fp8 else HALF
    table, slots = _paged(lens, bs, g)
    k_cache, v_cache = _asm_caches(dtype, head, bs)  # V as [blocks, heads, head, block]
    scale = torch.tensor([0.5 if fp8 else 1.0])
    for s, n in enumerate(lens):
        k, v = (torch.randn(n, KV_HEADS, head, generator=g).to(HALF) for _ in "kv")
        c.reshape_and_cache(
            k, v, k_cache, v_cache, slots[s], "fp8" if fp8 else "auto",
            scale if fp8 else None, scale if fp8 else None, False,
        )  # fmt: skip
    q = torch.randn(len(lens), Q_HEADS, head, generator=g).to(HALF)
    ctx = torch.tensor(lens, dtype=torch.int32)
    want = torch.empty_like(q)
    pa.paged_attention_decode(
        want, q, c.k_cache_view(k_cache), c.v_cache_view(v_cache, k_cache.shape[-1],
        head, asm_layout=False), ctx, table, 1 / math.sqrt(head), max(lens),
        tl.float16, scale, scale,
    )  # fmt: skip
    got = torch.empty_like(q)
    c.pa_decode_gluon(
        got, q, k_cache, v_cache, ctx, table, 1 / math.sqrt(head), 1, 1, 256,
        torch.float16, None, scale if fp8 else None, scale if fp8 else None,
    )  # fmt: skip
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1e-2)


# -- varlen prefill ----------------------------------------------------------------


@pytest.mark.parametrize("window", [-1, 5])
def test_unified_attention_agrees_with_flash_attn_varlen(aiter, window):
    """AITER's Triton ``unified_attention`` (causal, GQA, over a flash-layout paged
    cache holding the prompt) and the ``flash_attn_varlen_func`` stand-in over the
    same K/V agree, with and without a sliding window."""
    ua = aiter("aiter.ops.triton.attention.unified_attention")
    g = torch.Generator().manual_seed(11)
    head, bs, lens = 64, 16, [6, 13]
    table, slots = _paged(lens, bs, g)
    total = sum(lens)
    cu = torch.tensor([0, lens[0], total], dtype=torch.int32)
    q = torch.randn(total, Q_HEADS, head, generator=g).to(HALF)
    k, v = (torch.randn(total, KV_HEADS, head, generator=g).to(HALF) for _ in "kv")
    k_cache = torch.zeros(NUM_BLOCKS, bs, KV_HEADS, head).to(HALF)
    v_cache = torch.zeros_like(k_cache)
    every = torch.cat(slots)
    k_cache[every // bs, every % bs] = k
    v_cache[every // bs, every % bs] = v
    scale = 1 / math.sqrt(head)
    want = torch.empty_like(q)
    ua.unified_attention(
        q, k_cache, v_cache, want, cu, max(lens), torch.tensor(lens, dtype=torch.int32),
        max(lens), scale, True, (window, -1), table, 0, None, None, None,
    )  # fmt: skip
    got = contracts().flash_attn_varlen_func(
        q, k, v, cu, cu, max(lens), max(lens), softmax_scale=scale, causal=True,
        window_size=(window, 0, 0),
    )  # fmt: skip
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("window", [-1, 3])
def test_flash_attn_varlen_is_causal_gqa_attention(window):
    """The stand-in against plain attention: causal bottom-right (a chunk of 4
    queries over 9 keys, a prompt of 7), GQA, sliding window."""
    g = torch.Generator().manual_seed(5)
    head = 32
    cu_q = torch.tensor([0, 4, 11], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 16], dtype=torch.int32)
    q = torch.randn(11, Q_HEADS, head, generator=g).bfloat16()
    k, v = (torch.randn(16, KV_HEADS, head, generator=g).bfloat16() for _ in "kv")
    got = contracts().flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, 7, 9, causal=True, window_size=(window, 0, 0)
    )
    for b in range(2):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        want = attention(q[qs], k[ks], v[ks], head**-0.5, True, window)
        torch.testing.assert_close(got[qs].double(), want, atol=2e-2, rtol=1e-2)


# -- MLA ---------------------------------------------------------------------------


def _mla_case(g):
    lora, rope, heads, lens = 64, 16, 4, [5, 12]
    total = sum(lens)
    kv = torch.randn(total + 3, 1, 1, lora + rope, generator=g).bfloat16()
    pages = torch.randperm(total + 3, generator=g)[:total].to(torch.int32)
    kv_indptr = torch.tensor([0, lens[0], total], dtype=torch.int32)
    return kv, pages, kv_indptr, lens, lora, heads


@pytest.mark.parametrize("fp8", [False, True])
def test_mla_decode_is_absorbed_attention(fp8):
    """``mla_decode_fwd``: one query per sequence over its latent pages, keys = the
    whole row, values = the first kv_lora_rank elements; FP8 cache with kv_scale."""
    g = torch.Generator().manual_seed(int(fp8))
    kv, pages, kv_indptr, _, lora, heads = _mla_case(g)
    q = torch.randn(2, heads, kv.shape[-1], generator=g).bfloat16()
    scale, kv_scale = 0.1, None
    want_kv = kv.float()
    if fp8:
        kv_scale = torch.tensor([0.05])
        kv = (kv.float() / kv_scale).to(torch.float8_e4m3fnuz)
        want_kv = kv.float() * kv_scale
    o = torch.empty(2, heads, lora).bfloat16()
    qo = torch.tensor([0, 1, 2], dtype=torch.int32)
    last = torch.ones(2, dtype=torch.int32)
    contracts().mla_decode_fwd(
        q, kv, o, qo, kv_indptr, pages, last, 1, sm_scale=scale, kv_scale=kv_scale
    )
    rows = want_kv.view(kv.shape[0], -1)
    for b in range(2):
        kb = rows[pages[kv_indptr[b] : kv_indptr[b + 1]].long()][:, None]
        want = attention(q[b : b + 1], kb, kb[..., :lora], scale)
        torch.testing.assert_close(o[b : b + 1].double(), want, atol=2e-2, rtol=1e-2)


def test_mla_decode_called_as_the_fp8_paged_prefill_calls_it_is_refused():
    """A known bug of the pin, kept by series 3's FP8 paged prefill: ATOM passes
    ``max_q_len, self.scale, 0.0, None`` positionally (``attention_mla.py:450-462``),
    so the softmax scale lands in ``page_size`` and ``0.0`` in ``nhead_kv``
    (``aiter/mla.py:144-155``)."""
    g = torch.Generator().manual_seed(3)
    kv, pages, kv_indptr, _, lora, heads = _mla_case(g)
    q = torch.randn(2, heads, kv.shape[-1], generator=g).bfloat16()
    o = torch.empty(2, heads, lora).bfloat16()
    qo = torch.tensor([0, 1, 2], dtype=torch.int32)
    last = torch.ones(2, dtype=torch.int32)
    with pytest.raises(TypeError, match="page_size=0.1"):
        contracts().mla_decode_fwd(
            q, kv, o, qo, kv_indptr, pages, last, 1, 0.1, 0.0, None
        )


def test_mla_prefill_is_causal_absorbed_attention():
    g = torch.Generator().manual_seed(9)
    kv, pages, kv_indptr, lens, lora, heads = _mla_case(g)
    qo = kv_indptr.clone()  # every key a query: a prefill
    q = torch.randn(sum(lens), heads, kv.shape[-1], generator=g).bfloat16()
    o = torch.empty(sum(lens), heads, lora).bfloat16()
    last = torch.ones(2, dtype=torch.int32)
    contracts().mla_prefill_fwd(q, kv, o, qo, kv_indptr, pages, last, max(lens), 0.1)
    rows = kv.float().view(kv.shape[0], -1)
    for b in range(2):
        sl = slice(qo[b], qo[b + 1])
        kb = rows[pages[sl].long()][:, None]
        want = attention(q[sl], kb, kb[..., :lora], 0.1, causal=True)
        torch.testing.assert_close(o[sl].double(), want, atol=2e-2, rtol=1e-2)


# -- MoE ---------------------------------------------------------------------------


def _sorting_buffers(M, T, E, unit):
    padded = M * T + E * unit - T
    return (
        torch.empty(padded, dtype=torch.int32),
        torch.empty(padded, dtype=torch.float32),
        torch.empty((padded + unit - 1) // unit, dtype=torch.int32),
        torch.empty(2, dtype=torch.int32),
        torch.ones(M, 8).bfloat16(),
    )


def test_moe_sorting_matches_the_projects_torch_sorting():
    """The stand-in and the overlay's vectorised ``moe_sorting_torch`` (FlyDSL's
    input) produce the same encoding; every (token, slot) appears once, in a block
    of its expert."""
    g = torch.Generator().manual_seed(2)
    M, T, E, unit = 9, 2, 6, 4
    ids = torch.stack([torch.randperm(E, generator=g)[:T] for _ in range(M)])
    ids = ids.to(torch.int32)
    w = torch.rand(M, T, generator=g)
    bufs = _sorting_buffers(M, T, E, unit)
    contracts().moe_sorting_fwd(ids, w, *bufs, E, unit)
    sorted_ids, sorted_w, expert_ids, valid, moe_buf = bufs
    assert not moe_buf.any()
    flydsl = load_overlay("atom/model_ops/flydsl_moe.py", "atom_ckfree_flydsl_moe")
    theirs = flydsl.moe_sorting_torch(ids, w, E, unit)
    n = int(valid[0])
    assert torch.equal(valid, theirs.num_valid_ids)
    assert torch.equal(sorted_ids[:n], theirs.sorted_token_ids[:n])
    assert torch.equal(sorted_w[:n], theirs.sorted_weights[:n])
    nb = n // unit
    assert torch.equal(expert_ids[:nb], theirs.sorted_expert_ids[:nb])
    live = sorted_ids[:n][sorted_ids[:n] != ((T << 24) | M)]
    token, slot = live & 0xFFFFFF, live >> 24
    assert sorted(zip(token.tolist(), slot.tolist(), strict=True)) == [
        (t, s) for t in range(M) for s in range(T)
    ]
    block_of = torch.nonzero(sorted_ids[:n] != ((T << 24) | M)).flatten() // unit
    assert torch.equal(ids[token.long(), slot.long()], expert_ids[block_of])


def test_unshuffle_inverts_aiters_shuffle_weight(aiter):
    shuffle = aiter("aiter.ops.shuffle").shuffle_weight
    w = torch.randn(3, 32, 64).to(torch.float8_e4m3fnuz)
    shuffled = shuffle(w)
    assert not torch.equal(shuffled.view(torch.uint8), w.view(torch.uint8))
    back = contracts().unshuffle_weight(shuffled)
    assert torch.equal(back.view(torch.uint8), w.view(torch.uint8))


def _moe_reference(x, w1, w2, tw, ti):
    """Dense float64 MoE: sum_k w_k * (silu(x W1g^T) * (x W1u^T)) W2^T."""
    inter = w2.shape[-1]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for s in range(ti.shape[1]):
            e = int(ti[t, s])
            h = x[t].double() @ w1[e].double().T
            h = torch.nn.functional.silu(h[:inter]) * h[inter:]
            out[t] += float(tw[t, s]) * (h @ w2[e].double().T)
    return out


@pytest.mark.parametrize("quant", ["No", "per_Tensor", "per_1x128"])
def test_fused_moe_is_the_dense_moe(aiter, quant):
    """``fused_moe`` (CK stand-in) with AITER-shuffled weights equals a dense MoE on
    the dequantised weights (FP8: within the activations' FP8 rounding)."""
    g = torch.Generator().manual_seed(4)
    M, K, N, E, T = 5, 128, 128, 4, 2
    x = torch.randn(M, K, generator=g).bfloat16()
    w1 = torch.randn(E, 2 * N, K, generator=g) / 8
    w2 = torch.randn(E, K, N, generator=g) / 8
    ti = torch.stack([torch.randperm(E, generator=g)[:T] for _ in range(M)])
    tw = torch.rand(M, T, generator=g)
    shuffle = aiter("aiter.ops.shuffle").shuffle_weight
    fp8 = torch.float8_e4m3fnuz

    def quantise(w, s):
        full = s.repeat_interleave(128, 1).repeat_interleave(128, 2)
        full = full[:, : w.shape[1], : w.shape[2]] if s.shape[1] > 1 else s
        fmax = torch.finfo(fp8).max
        q = (w / full).clamp(-fmax, fmax).to(fp8)
        return q, q.float() * full

    if quant == "No":
        q1, q2, s1, s2, qt = w1.bfloat16(), w2.bfloat16(), None, None, 0
        d1, d2, tol = q1.float(), q2.float(), 1e-2
    else:
        if quant == "per_Tensor":
            s1, s2, qt = torch.full((E, 1, 1), 0.004), torch.full((E, 1, 1), 0.003), 1
        else:
            s1 = torch.rand(E, 2 * N // 128, K // 128, generator=g) / 200 + 2e-3
            s2 = torch.rand(E, K // 128, N // 128, generator=g) / 200 + 2e-3
            qt = 4
        (q1, d1), (q2, d2) = quantise(w1, s1), quantise(w2, s2)
        tol = 5e-2  # the activations' FP8 rounding, before each stage
    out = contracts().fused_moe(
        x, shuffle(q1), shuffle(q2), tw, ti.to(torch.int32), None, 1, qt,
        False, s1, s2,
    )  # fmt: skip
    want = _moe_reference(x, d1, d2, tw, ti)
    err = (out.double() - want).norm() / want.norm()
    assert err < tol, f"relative error {err:.3g}"


def test_moe_sorting_with_an_expert_mask_renumbers_the_local_experts():
    """EP: experts masked off get no rows; the others are numbered among the local
    ones (expert 3 of mask [0, 1, 0, 1] is local expert 1)."""
    ids = torch.tensor([[0, 3], [1, 2], [3, 1]], dtype=torch.int32)
    w = torch.rand(3, 2)
    bufs = _sorting_buffers(3, 2, 4, 2)
    mask = torch.tensor([0, 1, 0, 1], dtype=torch.int32)
    contracts().moe_sorting_fwd(ids, w, *bufs, 4, 2, local_expert_mask=mask)
    sorted_ids, _, expert_ids, valid, _ = bufs
    pad = (2 << 24) | 3
    assert valid.tolist() == [4, 3]
    # expert 1: (token 1, slot 0), (token 2, slot 1); expert 3: (0, 1), (2, 0)
    assert sorted_ids[:4].tolist() == [1, (1 << 24) | 2, (1 << 24) | 0, 2]
    assert expert_ids[:2].tolist() == [0, 1]
    assert (expert_ids[2:] == -1).all() and (sorted_ids[4:] == pad).all()


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
def test_rope_stand_in_is_aiters_triton_rope(aiter, neox):
    """The RoPE stand-in (what ATOM-side tests run) rotates as AITER's Triton
    ``rope_cached_thd_positions_2c_fwd_inplace`` does, NeoX and GPT-J, GQA."""
    rope = aiter("aiter.ops.triton.rope.rope")
    g = torch.Generator().manual_seed(5)
    t, head = 5, 64
    pos, cos, sin = _rope_inputs(t, head, g)
    q = torch.randn(t, Q_HEADS, head, generator=g).to(HALF)
    k = torch.randn(t, KV_HEADS, head, generator=g).to(HALF)
    want_q, want_k = q.clone(), k.clone()
    rope.rope_cached_thd_positions_2c_fwd_inplace(
        want_q, want_k, cos, sin, pos, 0 if neox else 1, True, False
    )
    got_q, got_k = q.clone(), k.clone()
    contracts().rope_cached_thd_positions_2c_fwd_inplace(
        got_q, got_k, cos, sin, pos, 0 if neox else 1, True, False
    )
    assert not torch.equal(got_q, q)
    torch.testing.assert_close(got_q, want_q, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(got_k, want_k, atol=2e-3, rtol=1e-3)


def test_asm_moe_is_the_dense_moe_with_per_channel_scales(aiter):
    """``asm_moe`` (ASM stand-in, the a8w8 ``fmoe_g1u1`` mode) with AITER-shuffled FP8
    weights and per-channel scales ``[E, 1, rows]`` equals a dense MoE on the
    dequantised weights, within the per-token FP8 rounding of both stages' inputs."""
    g = torch.Generator().manual_seed(6)
    M, K, N, E, T = 5, 128, 64, 4, 2
    fp8 = torch.float8_e4m3fnuz
    x = torch.randn(M, K, generator=g).bfloat16()
    s1 = torch.rand(E, 2 * N, 1, generator=g) / 200 + 2e-3
    s2 = torch.rand(E, K, 1, generator=g) / 200 + 2e-3
    q1 = (torch.randn(E, 2 * N, K, generator=g) * 8).to(fp8)
    q2 = (torch.randn(E, K, N, generator=g) * 8).to(fp8)
    ti = torch.stack([torch.randperm(E, generator=g)[:T] for _ in range(M)])
    tw = torch.rand(M, T, generator=g)
    shuffle = aiter("aiter.ops.shuffle").shuffle_weight
    out = contracts().asm_moe(
        x, shuffle(q1), shuffle(q2), tw, ti.to(torch.int32),
        fc1_scale=s1.view(E, 1, -1), fc2_scale=s2.view(E, 1, -1),
    )  # fmt: skip
    want = _moe_reference(x, q1.float() * s1, q2.float() * s2, tw, ti)
    err = (out.double() - want).norm() / want.norm()
    assert err < 5e-2, f"relative error {err:.3g}"
