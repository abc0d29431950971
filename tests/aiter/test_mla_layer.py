"""The patched ``MLAAttention`` (all seven series on the pin) on AITER's real Triton
MLA decode and the stand-ins of its ASM/CK entry points, against a plain torch
absorbed-MLA reference written from the definition.

- decode (``_forward_decode``, one query token a sequence) with a model-dtype and an
  FP8 latent cache: AITER's ``decode_attention_fwd_grouped_rope`` with
  ``ATOM_CK_FREE=1`` (CK or not) or ``ATOM_USE_TRITON_MLA_DECODE=1``, the
  ``mla_decode_fwd`` stand-in with CK and neither flag. FP8: the query and the cache
  hold ``value / scale`` (as ATOM's ``fused_qk_rope_concat_and_cache_mla`` writes
  them, ``self._q_scale`` / ``self._k_scale``), scales that are not 1, data that
  FP8 represents exactly. Before series 3 dequantised them the Triton call raised
  ``Unsupported rhs dtype`` (``test_triton_mla_decode.py``).
- prefill (``_forward_prefill_mha``): the batched SDPA fallback without CK or with
  ``ATOM_CK_FREE=1``, the ``flash_attn_varlen_func`` stand-in with CK.
- paged prefill (``_forward_prefill_mla``, the sparse path's form: one query token a
  row): the ``mla_decode_fwd`` stand-in (FP8, which refuses a non-int
  ``page_size``: the pin passed the scale there) and ``mla_prefill_fwd``.

``forward`` itself is not driven: the latent cache writer and the query projection
before these methods (``fused_qk_rope_concat_and_cache_mla``, a HIP kernel) have no
stand-in; the methods get Q and the cache as that kernel leaves them. ``o`` is
compared before ``_v_up_proj_and_o_proj`` (identity here).

On the CPU the Triton interpreter runs the kernels at small sizes in fp16 (it
computes bf16 arithmetic wrongly, see test_contracts.py); on a GPU (``gpu``, with
``TRITON_INTERPRET=0``) the ``model`` sizes run in bf16 (DeepSeek-V3's MLA per rank).
"""

from __future__ import annotations

import types

import pytest
import torch
from fake_aiter import harness

from . import reference

pytestmark = pytest.mark.aiter


def _sizes(**kw):
    return types.SimpleNamespace(**kw)


SMALL = _sizes(heads=4, lora=64, rope=16, nope=16, v=16, lens=(3, 9, 1), hidden=32)
MODEL = _sizes(
    heads=16,
    lora=512,
    rope=64,
    nope=128,
    v=128,
    lens=(37, 1000, 4096, 513),
    hidden=7168,
)


@pytest.fixture
def size(device):
    """Small sizes on the CPU, a DeepSeek-V3 layer's on a GPU (conftest.py)."""
    return MODEL if device == "cuda" else SMALL


def _device_dtypes(size):
    """(device, model dtype, FP8 dtype): a GPU's with bf16 and e4m3fn (an H200),
    else the CPU's with fp16 and gfx942's e4m3fnuz."""
    if size is MODEL:
        return "cuda", torch.bfloat16, torch.float8_e4m3fn
    return "cpu", torch.float16, torch.float8_e4m3fnuz


def _fp8_values(shape, fp8, g):
    """Values that ``fp8`` holds exactly (of magnitude about 16), as float32."""
    fmax = torch.finfo(fp8).max
    return (torch.randn(shape, generator=g) * 16).clamp(-fmax, fmax).to(fp8).float()


K_SCALE, Q_SCALE = 2.0**-6, 2.0**-4  # stored value * scale = the value


def _attention(mla, size, dtype, device, kv_cache_dtype, scale):
    """An ``MLAAttention`` of the patched module (kv_b_proj and o_proj real)."""
    g = torch.Generator().manual_seed(7)
    kv_b = torch.nn.Linear(size.lora, size.heads * (size.nope + size.v), bias=False)
    o_proj = torch.nn.Linear(size.heads * size.v, size.hidden, bias=False)
    for lin in (kv_b, o_proj):
        lin.weight.data = torch.randn(lin.weight.shape, generator=g) * 0.1
    modules = mla.MLAModules(
        q_lora_rank=None,
        kv_lora_rank=size.lora,
        qk_nope_head_dim=size.nope,
        qk_rope_head_dim=size.rope,
        qk_head_dim=size.nope + size.rope,
        v_head_dim=size.v,
        rotary_emb=None,
        q_proj=None,
        kv_b_proj=kv_b.to(device, dtype),
        o_proj=o_proj.to(device, dtype),
        indexer=None,
    )
    attn = mla.MLAAttention(
        size.heads,
        size.nope + size.rope,
        scale,
        1,
        kv_cache_dtype,
        mla_modules=modules,
        dtype=dtype,
    )
    attn._v_up_proj_and_o_proj = lambda o: o
    if kv_cache_dtype == "fp8":
        attn._k_scale = torch.tensor(K_SCALE, device=device)
        attn._q_scale = torch.tensor(Q_SCALE, device=device)
    return attn


def _latent_case(size, fp8_cache, device, dtype, fp8, indices, seed):
    """One query row per sequence of ``size.lens`` over a shuffled latent cache.

    Returns (q, cache, kv_indptr, kv_indices, true q, true rows): ``q``/``cache`` as
    the layer gets them (FP8 holding value / scale, or the model dtype), the true
    values in float64. ``indices`` "exact": kv_indices has the batch's entries only
    (shorter than the cache); "buffer": ATOM's whole kv_indices buffer, longer than
    the cache, unset (huge) past the batch's entries."""
    g = torch.Generator().manual_seed(seed)
    d = size.lora + size.rope
    total, rows = sum(size.lens), sum(size.lens) + 7
    r_kv = _fp8_values((rows, 1, d), fp8, g)
    r_q = _fp8_values((len(size.lens), size.heads, d), fp8, g)
    if fp8_cache:
        cache, q = r_kv.to(fp8), r_q.to(fp8)
    else:
        cache, q = (r_kv * K_SCALE).to(dtype), (r_q * Q_SCALE).to(dtype)
    kv_indices = torch.randperm(rows, generator=g)[:total].to(torch.int32)
    if indices == "buffer":
        unset = torch.full((2 * rows,), 1 << 24, dtype=torch.int32)
        kv_indices = torch.cat([kv_indices, unset])
    lens = torch.tensor(size.lens)
    kv_indptr = torch.cat([torch.zeros(1), lens.cumsum(0)]).to(torch.int32)
    true = (r_q.double() * Q_SCALE, r_kv.double() * K_SCALE)
    return tuple(t.to(device) for t in (q, cache, kv_indptr, kv_indices, *true))


def _absorbed_mla(q, kv_rows, kv_indptr, kv_indices, lora, scale):
    """Absorbed MLA, per sequence b: keys the latent+rope rows the sequence's
    kv_indices name, values their first ``lora`` elements, no mask (the query is
    the last token)."""
    out = []
    for b in range(kv_indptr.numel() - 1):
        rows = kv_rows[kv_indices[kv_indptr[b] : kv_indptr[b + 1]].long()]
        out.append(reference.attention(q[b : b + 1], rows, rows[..., :lora], scale))
    return torch.cat(out)


TRITON = "decode_attention_fwd_grouped_rope"
DECODE_ROUTES = [
    pytest.param(False, {"ATOM_CK_FREE": "1"}, TRITON, id="no-ck-flag-on"),
    pytest.param(False, {}, TRITON, id="no-ck"),
    pytest.param(True, {"ATOM_CK_FREE": "1"}, TRITON, id="ck-flag-on"),
    pytest.param(True, {"ATOM_USE_TRITON_MLA_DECODE": "1"}, TRITON, id="ck-triton"),
    pytest.param(True, {}, "aiter.mla.mla_decode_fwd", id="ck"),
]


@pytest.mark.parametrize("indices", ["exact", "buffer"])
@pytest.mark.parametrize("kv_dtype", ["auto", "fp8"])
@pytest.mark.parametrize("ck,env,kernel", DECODE_ROUTES)
def test_decode_matches_absorbed_mla(
    atom_on_aiter, size, indices, kv_dtype, ck, env, kernel
):
    device, dtype, fp8 = _device_dtypes(size)
    atom = atom_on_aiter(ck=ck, env=env)
    mla = atom.module("atom.model_ops.attention_mla")
    scale = 0.5
    attn = _attention(mla, size, dtype, device, kv_dtype, scale)
    q, cache, kv_indptr, kv_indices, true_q, true_rows = _latent_case(
        size, kv_dtype == "fp8", device, dtype, fp8, indices, seed=len(size.lens)
    )
    meta = harness.mla_decode_metadata(len(size.lens), 1, kv_indptr, kv_indices, device)
    atom.fake.clear()
    got = attn._forward_decode(q, cache, meta)
    want = _absorbed_mla(true_q, true_rows, kv_indptr, kv_indices, size.lora, scale)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)
    # which kernel ran: the stand-in is recorded; AITER's real Triton kernel is not
    assert atom.fake.names() == ([kernel] if kernel != TRITON else [])


def _ragged(lens, device):
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return cu, types.SimpleNamespace(
        cu_seqlens_q=cu.to(device),
        cu_seqlens_k=cu.to(device),
        max_seqlen_q=max(lens),
        max_seqlen_k=max(lens),
        min_seqlen_q=min(lens),
        dropout_p=0.0,
    )


@pytest.mark.parametrize(
    "ck,env,flash",
    [
        pytest.param(False, {}, False, id="no-ck"),
        pytest.param(True, {"ATOM_CK_FREE": "1"}, False, id="ck-flag-on"),
        pytest.param(True, {}, True, id="ck"),
    ],
)
def test_prefill_matches_causal_attention(atom_on_aiter, size, ck, env, flash):
    device, dtype, _ = _device_dtypes(size)
    atom = atom_on_aiter(ck=ck, env=env)
    mla = atom.module("atom.model_ops.attention_mla")
    scale = 0.3
    attn = _attention(mla, size, dtype, device, "auto", scale)
    g = torch.Generator().manual_seed(3)
    lens = (*size.lens, 0)  # an empty sequence too
    cu, meta = _ragged(lens, device)
    t = int(cu[-1])
    q = torch.randn(t, size.heads, size.nope + size.rope, generator=g) * 0.5
    kv_c = torch.randn(t, size.lora, generator=g)
    k_rope = torch.randn(t, size.rope, generator=g)
    atom.fake.clear()
    got = attn._forward_prefill_mha(
        *(x.to(device, dtype) for x in (q, kv_c, k_rope)),
        torch.empty(0, device=device),
        meta,
    )
    # the reference: k = [kv_b_proj(c) nope part, k_rope], v = its v part, causal
    # within each sequence, then o_proj; in float64 on the CPU
    w_kv = attn.kv_b_proj.weight.cpu().double()
    w_o = attn.o_proj.weight.cpu().double()
    kv = (kv_c.to(dtype).double() @ w_kv.T).view(t, size.heads, -1)
    k = torch.cat(
        [
            kv[..., : size.nope],
            k_rope.to(dtype).double()[:, None].expand(-1, size.heads, -1),
        ],
        dim=-1,
    )
    v = kv[..., size.nope :]
    qd = q.to(dtype).double()
    att = torch.cat(
        [
            reference.attention(qd[s:e], k[s:e], v[s:e], scale, causal=True)
            for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())
        ]
    )
    want = att.flatten(1) @ w_o.T
    got = got.cpu().double()
    # bf16 (the GPU's model dtype) keeps 8 bits through kv_b_proj, the attention
    # and o_proj over sequences of up to 4096: a few elements of the 40 M at model
    # size are 0.18 off; the error as a whole stays small
    atol, rtol = (3e-2, 2e-2) if dtype == torch.float16 else (0.25, 5e-2)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    assert float((got - want).norm() / want.norm()) < 2e-2
    assert ("aiter.flash_attn_varlen_func" in atom.fake.names()) == flash


@pytest.mark.parametrize("kv_dtype", ["auto", "fp8"])
@pytest.mark.parametrize(
    "ck,env",
    [
        pytest.param(True, {}, id="ck"),
        pytest.param(True, {"ATOM_CK_FREE": "1"}, id="ck-flag-on"),
        pytest.param(False, {}, id="no-ck"),
    ],
)
def test_paged_prefill_matches_absorbed_mla(atom_on_aiter, size, kv_dtype, ck, env):
    """``_forward_prefill_mla`` as the sparse path calls it: one query token a row
    (``cu_seqlens_q`` = 0, 1, 2, ...), each with the cache rows its kv_indices name.
    FP8 goes to ``mla_decode_fwd`` with the scale by name (the pin's positional
    scale lands in ``page_size``, which the stand-in refuses as AITER's int-typed
    ASM binding does), the model dtype to ``mla_prefill_fwd``."""
    device, dtype, fp8 = _device_dtypes(size)
    atom = atom_on_aiter(ck=ck, env=env)
    mla = atom.module("atom.model_ops.attention_mla")
    scale = 0.5  # not mla_decode_fwd's default, 1 / sqrt(lora + rope)
    attn = _attention(mla, size, dtype, device, kv_dtype, scale)
    q, cache, kv_indptr, kv_indices, true_q, true_rows = _latent_case(
        size, kv_dtype == "fp8", device, dtype, fp8, "exact", seed=11
    )
    meta = harness.mla_decode_metadata(len(size.lens), 1, kv_indptr, kv_indices, device)
    atom.fake.clear()
    got = attn._forward_prefill_mla(q, cache, meta)
    want = _absorbed_mla(true_q, true_rows, kv_indptr, kv_indices, size.lora, scale)
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)
    entry = "mla_decode_fwd" if kv_dtype == "fp8" else "mla_prefill_fwd"
    assert atom.fake.names() == [f"aiter.mla.{entry}"]
