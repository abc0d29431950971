"""Series 2 and 3 against the pin: attention_mha / attention_mla as upstream has
them and as patched, run under the same recording fake ``aiter``.

With CK present and ``ATOM_CK_FREE=0`` the recorded call traces (kernel names,
argument shapes and dtypes) are equal over the grid of issue 3. With the flag on,
or CK absent, the patched modules follow the CK-free routing and never call a CK
entry point.
"""

from __future__ import annotations

import pytest
import torch
from fake_aiter.harness import (
    mha_forward,
    mla_decode,
    mla_prefill_mha,
    mla_prefill_paged,
)

pytestmark = pytest.mark.integration

PHASES = ("prefill", "decode")
HEAD_DIMS = (64, 128, 256)
WINDOWS = (None, 8)
KV_DTYPES = ("bf16", "fp8")
# ATOM's MHA cache blocks: 16, and 1024 for persistent ASM PA. (Block size 1 is MLA's
# page; an MHA K cache groups x = 16 bytes of a block's tokens, so a block holds at
# least x of them, and the stand-ins read the cache as it is laid out.)
BLOCK_SIZES = (16, 1024)
MAX_SEQLEN_Q = (1, 2)

GRID = pytest.mark.parametrize("phase", PHASES)
mha_grid = [
    pytest.mark.parametrize("head_dim", HEAD_DIMS),
    pytest.mark.parametrize("window", WINDOWS),
    pytest.mark.parametrize("kv_dtype", KV_DTYPES),
    pytest.mark.parametrize("block_size", BLOCK_SIZES),
    pytest.mark.parametrize("max_seqlen_q", MAX_SEQLEN_Q),
    GRID,
]


def with_grid(fn):
    for mark in mha_grid:
        fn = mark(fn)
    return fn


def run_mha(entry, label, monkeypatch, **config):
    """The calls of one forward; a call outside a kernel's contract (upstream's
    too: an MTP decode through ``pa_fwd_asm``, which reads one query token per
    sequence) ends the trace with the stand-in's refusal."""
    torch.manual_seed(0)
    entry["fake"].clear()
    try:
        mha_forward(entry[label]["mha"], **config)
    except ValueError as refused:
        return [*entry["fake"].trace, ("refused", str(refused))]
    return list(entry["fake"].trace)


def mha_config(phase, head_dim, window, kv_dtype, block_size, max_seqlen_q):
    return {
        "prefill": phase == "prefill",
        "head_dim": head_dim,
        "sliding_window": window,
        "kv_dtype": kv_dtype,
        "block_size": block_size,
        "max_seqlen_q": max_seqlen_q,
    }


@with_grid
def test_mha_flag_off_with_ck_is_upstream(
    attention_modules,
    monkeypatch,
    phase,
    head_dim,
    window,
    kv_dtype,
    block_size,
    max_seqlen_q,
):
    monkeypatch.delenv("ATOM_CK_FREE", raising=False)
    monkeypatch.delenv("AITER_FORCE_TRITON_ATTN", raising=False)
    entry = attention_modules(True)
    config = mha_config(phase, head_dim, window, kv_dtype, block_size, max_seqlen_q)
    pin = run_mha(entry, "pin", monkeypatch, **config)
    patched = run_mha(entry, "patched", monkeypatch, **config)
    assert pin and patched == pin


@pytest.mark.parametrize(
    "ck,flag", [(True, "1"), (False, "0")], ids=["flag-on", "no-ck"]
)
@with_grid
def test_mha_ck_free_routing(
    attention_modules,
    monkeypatch,
    ck,
    flag,
    phase,
    head_dim,
    window,
    kv_dtype,
    block_size,
    max_seqlen_q,
):
    monkeypatch.setenv("ATOM_CK_FREE", flag)
    monkeypatch.delenv("AITER_FORCE_TRITON_ATTN", raising=False)
    entry = attention_modules(ck)
    config = mha_config(phase, head_dim, window, kv_dtype, block_size, max_seqlen_q)
    names = [t[0] for t in run_mha(entry, "patched", monkeypatch, **config)]
    names = [n for n in names if n != "refused"]
    assert entry["fake"].touched_ck() == []
    asm = head_dim == 128 and window is None
    # the cache in the layout the decode backend reads (series 2): for ASM PA,
    # AITER's Triton RoPE, then the overlay's ASM-layout writer (not a fake entry)
    assert names[0] == (
        "aiter.ops.triton.rope.rope.rope_cached_thd_positions_2c_fwd_inplace"
        if asm
        else "aiter.ops.triton.fused_kv_cache.fused_qk_rope_reshape_and_cache"
    )
    if phase == "prefill":
        assert names[1:] == ["aiter.ops.triton.unified_attention.unified_attention"]
    else:
        expected = (
            ("aiter.pa_persistent_fwd" if block_size == 1024 else "aiter.pa_fwd_asm")
            if asm
            else "torch.ops.aiter.pa_decode_gluon"
        )
        assert names[-1] == expected


# MLA phases: prefill through flash_attn_varlen_func / the SDPA fallback
# (_forward_prefill_mha), prefill over the paged cache (_forward_prefill_mla:
# mla_decode_fwd / mla_prefill_fwd), decode. kv_dtype "fp8" is MLA fp8 on
# (FP8 cache and FP8 Q with scales), "bf16" is fp8 off.
MLA_PHASES = ("prefill", "prefill_paged", "decode")
MLA = [
    pytest.mark.parametrize("kv_dtype", KV_DTYPES),
    pytest.mark.parametrize("max_seqlen_q", MAX_SEQLEN_Q),
    pytest.mark.parametrize("phase", MLA_PHASES),
]


def intended_difference(phase, kv_dtype, max_seqlen_q) -> bool:
    """The one MLA cell where the patch changes the pin on purpose, flag off too.

    The pin's _forward_prefill_mla passes its scale to mla_decode_fwd (FP8) as the
    9th positional argument, which is page_size in AITER's mla_decode_fwd
    (aiter/mla.py: ..., max_seqlen_q, page_size, nhead_kv, sm_scale, logit_cap);
    the patch passes sm_scale and logit_cap by keyword. Upstream reaches this on
    the sparse (DeepSeek-V3.2) path with an FP8 cache."""
    return phase == "prefill_paged" and kv_dtype == "fp8"


def with_mla_grid(fn):
    for mark in MLA:
        fn = mark(fn)
    return fn


def run_mla(entry, label, phase, kv_dtype, max_seqlen_q):
    """The calls of one MLA phase; a call outside a kernel's contract (upstream's:
    its FP8 paged prefill hands mla_decode_fwd a float page_size) ends the trace
    with the stand-in's refusal."""
    torch.manual_seed(0)
    entry["fake"].clear()
    module = entry[label]["mla"]
    try:
        if phase == "prefill":
            lens = (4, 1, 3) if max_seqlen_q > 1 else (1, 1, 1)
            mla_prefill_mha(module, lens=lens, kv_dtype=kv_dtype)
        elif phase == "prefill_paged":
            mla_prefill_paged(module, max_seqlen_q=max_seqlen_q, kv_dtype=kv_dtype)
        else:
            mla_decode(module, max_seqlen_q=max_seqlen_q, kv_dtype=kv_dtype)
    except TypeError as refused:
        return [*entry["fake"].trace, ("refused", str(refused))]
    return list(entry["fake"].trace)


@with_mla_grid
def test_mla_flag_off_with_ck_is_upstream(
    attention_modules, monkeypatch, phase, kv_dtype, max_seqlen_q
):
    monkeypatch.delenv("ATOM_CK_FREE", raising=False)
    monkeypatch.delenv("ATOM_USE_TRITON_MLA_DECODE", raising=False)
    entry = attention_modules(True)
    pin = run_mla(entry, "pin", phase, kv_dtype, max_seqlen_q)
    patched = run_mla(entry, "patched", phase, kv_dtype, max_seqlen_q)
    assert pin
    if not intended_difference(phase, kv_dtype, max_seqlen_q):
        assert patched == pin
        return
    # the pin: (..., max_seqlen_q, scale, 0.0, None) positionally, which the
    # mla_decode_fwd stand-in refuses (page_size is an int of kv_buffer's shape)
    [(name, args, kwargs), refused] = pin
    assert refused == (
        "refused",
        "mla_decode_fwd: page_size=0.3 (an int, kv_buffer.shape[1] = 1)",
    )
    [(p_name, p_args, p_kwargs)] = patched
    assert name == p_name == "aiter.mla.mla_decode_fwd"
    assert args[8:] == (0.3, 0.0, None)  # the harness's MLAAttention scale is 0.3
    # patched: the same call, sm_scale and logit_cap by keyword
    assert p_args == args[:8]
    assert dict(p_kwargs) == {"sm_scale": 0.3, "logit_cap": 0.0, **dict(kwargs)}


@pytest.mark.parametrize(
    "ck,flag", [(True, "1"), (False, "0")], ids=["flag-on", "no-ck"]
)
@with_mla_grid
def test_mla_ck_free_routing(
    attention_modules, monkeypatch, ck, flag, phase, kv_dtype, max_seqlen_q
):
    monkeypatch.setenv("ATOM_CK_FREE", flag)
    entry = attention_modules(ck)
    names = [t[0] for t in run_mla(entry, "patched", phase, kv_dtype, max_seqlen_q)]
    assert entry["fake"].touched_ck() == []
    if phase == "prefill":
        assert names == []  # batched SDPA in torch, no AITER call
    elif phase == "prefill_paged":
        fp8 = kv_dtype == "fp8"
        assert names == [
            "aiter.mla.mla_decode_fwd" if fp8 else "aiter.mla.mla_prefill_fwd"
        ]
    elif max_seqlen_q == 1:
        assert names == [
            "aiter.ops.triton.attention.mla_decode_rope.decode_attention_fwd_grouped_rope"
        ]
    else:
        assert names == ["aiter.mla.mla_decode_fwd"]
