# SPDX-License-Identifier: MIT
"""MLA prefill of the patched attention_mla under the fake AITER: CK
flash-attention with CK, the batched SDPA fallback without it (numerics
against a float64 reference), and the Triton MLA decode routing."""

import importlib
import types

import fake_aiter
import pytest
import torch
from fake_aiter import atom_stubs, harness


def load(monkeypatch, ck=True, ck_free=False, triton_decode=False):
    monkeypatch.setenv("ATOM_CK_FREE", "1" if ck_free else "0")
    monkeypatch.setenv("ATOM_USE_TRITON_MLA_DECODE", "1" if triton_decode else "0")
    fake = fake_aiter.install(ck=ck)
    atom_stubs.prepare()
    from atom.utils import envs

    envs.aiter_has_ck.cache_clear()
    import atom.model_ops.attention_mla as mla

    mla = importlib.reload(mla)
    mla.triton_mla_decode_kernel.cache_clear()
    return fake, mla


@pytest.fixture(autouse=True)
def _uninstall():
    yield
    fake_aiter.uninstall()


H, NOPE, ROPE, V, LORA = 2, 16, 8, 16, 32


def make_attention(mla):
    modules = mla.MLAModules(
        q_lora_rank=None,
        kv_lora_rank=LORA,
        qk_nope_head_dim=NOPE,
        qk_rope_head_dim=ROPE,
        qk_head_dim=NOPE + ROPE,
        v_head_dim=V,
        rotary_emb=None,
        q_proj=None,
        kv_b_proj=torch.nn.Linear(LORA, H * (NOPE + V), bias=False),
        o_proj=torch.nn.Identity(),
        indexer=None,
    )
    return mla.MLAAttention(
        H, NOPE + ROPE, 0.3, 1, "bf16", mla_modules=modules, dtype=torch.float32
    )


def ragged(lens, dtype=torch.float32):
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    return cu, types.SimpleNamespace(
        cu_seqlens_q=cu,
        cu_seqlens_k=cu,
        max_seqlen_q=max(lens),
        max_seqlen_k=max(lens),
        min_seqlen_q=0,
        dropout_p=0.0,
    )


def reference(q, k, v, cu, scale):
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[-1], dtype=torch.float64)
    for b in range(cu.numel() - 1):  # the reference may loop; the fallback may not
        s, e = int(cu[b]), int(cu[b + 1])
        if e == s:
            continue
        qs, ks, vs = (t[s:e].double().transpose(0, 1) for t in (q, k, v))
        w = qs @ ks.transpose(-1, -2) * scale
        w = w.masked_fill(torch.ones(e - s, e - s).triu(1).bool(), float("-inf"))
        out[s:e] = (w.softmax(-1) @ vs).transpose(0, 1)
    return out


@pytest.mark.parametrize("lens", [[5, 0, 1, 7], [1], [3, 3, 3], [0, 9, 2]])
def test_varlen_fallback_matches_float64(monkeypatch, lens):
    load(monkeypatch)
    from atom.model_ops import ck_free_mla

    torch.manual_seed(0)
    cu, _ = ragged(lens)
    t = sum(lens)
    q, k, v = torch.randn(t, H, 24), torch.randn(t, H, 24), torch.randn(t, H, 16)
    got = ck_free_mla.varlen_causal_attention(
        q, k, v, cu, cu, max(lens), max(lens), 0.3
    )
    torch.testing.assert_close(
        got.double(), reference(q, k, v, cu, 0.3), atol=1e-5, rtol=1e-5
    )


def test_prefix_offset_is_bottom_right_causal(monkeypatch):
    load(monkeypatch)
    from atom.model_ops import ck_free_mla

    q, k, v = torch.randn(2, 1, 8), torch.randn(5, 1, 8), torch.randn(5, 1, 8)
    cu_q, cu_k = torch.tensor([0, 2], dtype=torch.int32), torch.tensor(
        [0, 5], dtype=torch.int32
    )
    got = ck_free_mla.varlen_causal_attention(q, k, v, cu_q, cu_k, 2, 5, 1.0)
    w = (q[:, 0] @ k[:, 0].T).masked_fill(
        torch.tensor([[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]).bool(), float("-inf")
    )
    torch.testing.assert_close(got[:, 0], w.softmax(-1) @ v[:, 0])


@pytest.mark.parametrize(
    "ck,flag,uses_ck", [(True, False, True), (True, True, False), (False, False, False)]
)
def test_prefill_mha_routing(monkeypatch, ck, flag, uses_ck):
    fake, mla = load(monkeypatch, ck=ck, ck_free=flag)
    attn = make_attention(mla)
    lens = [4, 1, 3]
    _, meta = ragged(lens)
    t = sum(lens)
    out = attn._forward_prefill_mha(
        torch.randn(t, H, NOPE + ROPE),
        torch.randn(t, LORA),
        torch.randn(t, ROPE),
        torch.empty(0),
        meta,
    )
    assert out.shape == (t, H * V)
    assert ("aiter.flash_attn_varlen_func" in fake.names()) == uses_ck
    assert fake.touched_ck() == (
        [] if not uses_ck else ["aiter.flash_attn_varlen_func"]
    )


def _decode(mla, max_seqlen_q=1):
    attn = make_attention(mla)
    b = 3
    meta = harness.mla_decode_metadata(b, max_seqlen_q)
    attn._v_up_proj_and_o_proj = lambda o: o
    q = torch.randn(b * max_seqlen_q, H, LORA + ROPE, dtype=torch.bfloat16)
    return attn._forward_decode(
        q, torch.zeros(16, 1, LORA + ROPE, dtype=torch.bfloat16), meta
    )


@pytest.mark.parametrize(
    "ck,flag,triton,expected",
    [
        (True, False, False, "aiter.mla.mla_decode_fwd"),
        (
            True,
            False,
            True,
            "aiter.ops.triton.attention.mla_decode_rope.decode_attention_fwd_grouped_rope",
        ),
        (
            True,
            True,
            False,
            "aiter.ops.triton.attention.mla_decode_rope.decode_attention_fwd_grouped_rope",
        ),
        (
            False,
            False,
            False,
            "aiter.ops.triton.attention.mla_decode_rope.decode_attention_fwd_grouped_rope",
        ),
    ],
)
def test_decode_routing(monkeypatch, ck, flag, triton, expected):
    fake, mla = load(monkeypatch, ck=ck, ck_free=flag, triton_decode=triton)
    _decode(mla)
    assert fake.names() == [expected]


def test_triton_decode_only_for_one_query_token(monkeypatch):
    fake, mla = load(monkeypatch, ck_free=True)
    _decode(mla, max_seqlen_q=2)
    assert fake.names() == ["aiter.mla.mla_decode_fwd"]


def test_triton_decode_found_in_the_older_module(monkeypatch):
    fake, mla = load(monkeypatch, ck_free=True)
    new = "aiter.ops.triton.attention.mla_decode_rope"
    kernel = fake.modules[new].decode_attention_fwd_grouped_rope
    monkeypatch.delattr(fake.modules[new], "decode_attention_fwd_grouped_rope")
    old = types.ModuleType("aiter.ops.triton.mla_decode_rope")
    old.decode_attention_fwd_grouped_rope = kernel
    monkeypatch.setitem(__import__("sys").modules, old.__name__, old)
    assert mla.triton_mla_decode_kernel() is kernel


def test_triton_decode_missing_is_a_clear_error(monkeypatch):
    fake, mla = load(monkeypatch, ck_free=True)
    monkeypatch.delattr(
        fake.modules["aiter.ops.triton.attention.mla_decode_rope"],
        "decode_attention_fwd_grouped_rope",
    )
    with pytest.raises(ImportError, match="decode_attention_fwd_grouped_rope"):
        mla.triton_mla_decode_kernel()


# -- the paged MLA prefill (_forward_prefill_mla) -------------------------------


def _paged_prefill(mla, max_seqlen_q, kv_dtype, b=3):
    attn = make_attention(mla)
    attn._v_up_proj_and_o_proj = lambda o: o
    meta = types.SimpleNamespace(
        kv_indptr=torch.tensor([0, 2, 5, 6], dtype=torch.int32),
        kv_indices=torch.arange(6, dtype=torch.int32),
        cu_seqlens_q=torch.arange(b + 1, dtype=torch.int32) * max_seqlen_q,
        kv_last_page_lens=torch.ones(b, dtype=torch.int32),
        max_seqlen_q=max_seqlen_q,
    )
    dtype = torch.float8_e4m3fnuz if kv_dtype == "fp8" else torch.float32
    attn.kv_cache_dtype = "fp8" if kv_dtype == "fp8" else "auto"
    q = torch.randn(b * max_seqlen_q, H, LORA + ROPE).to(dtype)
    cache = torch.randn(16, 1, LORA + ROPE).to(dtype)
    attn._forward_prefill_mla(q, cache, meta)
    return attn


MODES = pytest.mark.parametrize(
    "ck,flag", [(True, False), (True, True), (False, False)]
)


@MODES
def test_fp8_paged_prefill_passes_sm_scale_by_keyword(monkeypatch, ck, flag):
    """mla_decode_fwd's 9th and 10th parameters are page_size and nhead_kv
    (aiter/mla.py); the scale goes by name."""
    fake, mla = load(monkeypatch, ck=ck, ck_free=flag)
    _paged_prefill(mla, 1, "fp8")
    [(name, args, kwargs)] = fake.trace
    assert name == "aiter.mla.mla_decode_fwd"
    assert args[0][2] == "float8_e4m3fnuz" and args[1][2] == "float8_e4m3fnuz"
    assert len(args) == 8 and args[7] == 1  # ... max_seqlen_q, then keywords
    assert dict(kwargs)["sm_scale"] == 0.3
    assert {k for k, _ in kwargs} == {"sm_scale", "logit_cap", "q_scale", "kv_scale"}


def test_model_dtype_paged_prefill_is_upstreams_call(monkeypatch):
    fake, mla = load(monkeypatch)
    _paged_prefill(mla, 1, "auto")
    [(name, args, kwargs)] = fake.trace
    assert name == "aiter.mla.mla_prefill_fwd"
    assert args[7:] == (1, 0.3, 0.0, None) and kwargs == ()


# -- FP8 for the Triton MLA decode (ck_free_mla) ---------------------------------


def test_fp8_is_dequantised_with_the_per_tensor_scale(monkeypatch):
    load(monkeypatch)
    from atom.model_ops import ck_free_mla

    x = (torch.randn(6, 2, 8) * 4).to(torch.float8_e4m3fnuz)
    scale = torch.tensor(0.25)
    got = ck_free_mla.dequantised(x, scale, torch.bfloat16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, (x.double() * 0.25).to(torch.bfloat16))
    same = torch.ones(3)
    assert ck_free_mla.dequantised(same, scale, torch.float32) is same
    plain = ck_free_mla.dequantised(
        torch.ones(3, dtype=torch.float16), scale, torch.float32
    )
    torch.testing.assert_close(plain, torch.ones(3))  # not FP8: no scale applied


@pytest.mark.parametrize("num_indices", [5, 16, 40])
def test_dequantised_kv_rows_read_as_the_cache(monkeypatch, num_indices):
    """rows[indices[p]] is the dequantised cache[kv_indices[p]] wherever
    kv_indices names a row; fewer indices than rows gathers only those rows."""
    load(monkeypatch)
    from atom.model_ops import ck_free_mla

    g = torch.Generator().manual_seed(num_indices)
    cache = (torch.randn(16, 1, 12, generator=g) * 4).to(torch.float8_e4m3fnuz)
    kv_indices = torch.randint(0, 16, (num_indices,), generator=g, dtype=torch.int32)
    kv_indices[-1] = 1 << 20  # an unset entry past the batch: clamped, never read
    scale = torch.tensor(0.5)
    rows, indices = ck_free_mla.dequantised_kv_rows(
        cache, kv_indices, scale, torch.float16
    )
    assert rows.dtype == torch.float16 and indices.dtype == torch.int32
    assert rows.shape[0] == min(num_indices, 16)
    used = slice(0, num_indices - 1)
    want = (cache.float() * 0.5)[kv_indices[used].long()]
    torch.testing.assert_close(rows[indices[used].long()].float(), want)


def test_model_dtype_cache_rows_are_the_cache(monkeypatch):
    load(monkeypatch)
    from atom.model_ops import ck_free_mla

    cache, kv_indices = torch.randn(8, 1, 4), torch.arange(3, dtype=torch.int32)
    rows, indices = ck_free_mla.dequantised_kv_rows(
        cache, kv_indices, torch.tensor(2.0), torch.float32
    )
    assert rows is cache and indices is kv_indices
