# SPDX-License-Identifier: MIT
"""MHA dispatch of the patched attention_mha under the fake AITER: which
kernels run with and without CK, and the pieces computed in torch."""

import importlib

import fake_aiter
import pytest
import torch
from fake_aiter import atom_stubs
from fake_aiter.harness import mha_forward


def load(ck: bool, monkeypatch, ck_free: bool = False):
    monkeypatch.setenv("ATOM_CK_FREE", "1" if ck_free else "0")
    fake = fake_aiter.install(ck=ck)
    atom_stubs.prepare()
    from atom.utils import envs

    envs.aiter_has_ck.cache_clear()
    import atom.model_ops.attention_mha as mha

    return fake, importlib.reload(mha)


@pytest.fixture(autouse=True)
def _uninstall():
    yield
    fake_aiter.uninstall()


@pytest.mark.parametrize("head_dim,window", [(128, None), (64, None), (128, 8)])
def test_upstream_routing_with_ck(monkeypatch, head_dim, window):
    fake, mha = load(ck=True, monkeypatch=monkeypatch)
    mha_forward(mha, prefill=True, head_dim=head_dim, sliding_window=window)
    assert "aiter.flash_attn_varlen_func" in fake.names()
    fake.clear()
    mha_forward(mha, prefill=False, head_dim=head_dim, sliding_window=window)
    asm = head_dim == 128 and window is None
    assert ("aiter.pa_fwd_asm" in fake.names()) == asm
    assert ("torch.ops.aiter.pa_decode_gluon" in fake.names()) == (not asm)


@pytest.mark.parametrize("ck,flag", [(False, False), (True, True)])
@pytest.mark.parametrize("head_dim,window", [(128, None), (256, None), (128, 8)])
def test_ck_free_routing(monkeypatch, ck, flag, head_dim, window):
    fake, mha = load(ck=ck, monkeypatch=monkeypatch, ck_free=flag)
    asm = head_dim == 128 and window is None
    # ASM PA's cache: AITER's Triton RoPE, then kv_cache_asm's writer (not AITER's)
    update = (
        "aiter.ops.triton.rope.rope.rope_cached_thd_positions_2c_fwd_inplace"
        if asm
        else "aiter.ops.triton.fused_kv_cache.fused_qk_rope_reshape_and_cache"
    )
    mha_forward(mha, prefill=True, head_dim=head_dim, sliding_window=window)
    assert fake.names() == [
        update,
        "aiter.ops.triton.unified_attention.unified_attention",
    ]
    fake.clear()
    mha_forward(mha, prefill=False, head_dim=head_dim, sliding_window=window)
    assert fake.names()[0] == update
    assert fake.names()[-1] == (
        "aiter.pa_fwd_asm" if asm else "torch.ops.aiter.pa_decode_gluon"
    )
    assert fake.touched_ck() == []


def test_force_triton_attention(monkeypatch):
    fake, mha = load(ck=True, monkeypatch=monkeypatch)
    monkeypatch.setenv("AITER_FORCE_TRITON_ATTN", "1")
    mha_forward(mha, prefill=False, head_dim=128)
    assert "torch.ops.aiter.pa_decode_gluon" in fake.names()
    assert "aiter.pa_fwd_asm" not in fake.names()


def test_block_size_1024_persistent_asm_in_ck_free_mode(monkeypatch):
    fake, mha = load(ck=False, monkeypatch=monkeypatch)
    mha_forward(mha, prefill=False, head_dim=128, block_size=1024)
    assert "aiter.pa_persistent_fwd" in fake.names()


def test_fp8_per_token_scales_written_for_asm(monkeypatch):
    """ASM PA dequantises an FP8 cache per token: the CK-free writer quantises each
    (token, head) row with its own scale, into the buffers ASM PA reads."""
    _, mha = load(ck=False, monkeypatch=monkeypatch)
    attn, layer, metadata, _ = mha_forward(
        mha, prefill=False, head_dim=128, kv_dtype="fp8"
    )
    written = metadata.slot_mapping
    bs = layer.k_scale.shape[-1]
    for buf in (layer.k_scale, layer.v_scale):
        got = buf[written // bs, :, written % bs]
        assert torch.all(got > 0) and got.unique().numel() > 1
        assert buf.count_nonzero() == got.numel()
    assert attn.kv_scale_float > 1.0  # e4m3fn max / e4m3fnuz max


def test_kv_scale_is_a_buffer_following_the_module(monkeypatch):
    _, mha = load(ck=True, monkeypatch=monkeypatch)
    attn = mha.Attention(4, 128, 0.1, 2, kv_cache_dtype="fp8")
    assert "kv_scale" in dict(attn.named_buffers())
    assert "kv_scale" not in attn.state_dict()
    assert attn.to(torch.float64).kv_scale.device.type == "cpu"


def test_prefill_block_table_vectorised(monkeypatch):
    load(ck=True, monkeypatch=monkeypatch)
    from atom.model_ops import ck_free_mha

    cu = torch.tensor([0, 3, 3, 4, 9], dtype=torch.int32)  # incl. empty, length 1
    table = ck_free_mha.prefill_block_table(cu, 5)
    assert table.dtype == torch.int32 and table.shape == (4, 5)
    assert table[0, :3].tolist() == [0, 1, 2]
    assert table[2, 0] == 3 and table[3].tolist() == [4, 5, 6, 7, 8]
    assert int(table.max()) <= 8 and int(table.min()) >= 0
