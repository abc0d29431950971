"""The ASM-layout KV cache writer (overlay/atom/model_ops/kv_cache_asm.py).

Under the Triton interpreter at small sizes: the bytes it writes equal those of the
``reshape_and_cache(asm_layout=True)`` and ``reshape_and_cache_with_pertoken_quant(
asm_layout=True)`` stand-ins (FP8 data chosen so that quantising rounds nothing: the
interpreter's float32 -> FP8 cast rounds differently from torch and the GPU), and a
cache it wrote over a prefill and decode steps (FP8: such data again), read by the
``pa_fwd_asm`` stand-in, gives plain torch attention.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from ..aiter.overlay_modules import contracts, kv_cache_asm
from ..aiter.reference import attention, exact_fp8

FP8 = (torch.float8_e4m3fnuz, torch.float8_e4m3fn)
MODES = [("bf16", torch.bfloat16)] + [
    (m, dt) for m in ("per-tensor", "per-token") for dt in FP8
]
NUM_BLOCKS, BLOCK_SIZE, KV_HEADS = 6, 16, 2


def _caches(dtype, head, block_size=BLOCK_SIZE):
    x = 16 // torch.empty(0, dtype=dtype).element_size()
    k = torch.zeros(NUM_BLOCKS, KV_HEADS, head // x, block_size, x, dtype=dtype)
    v = torch.zeros(NUM_BLOCKS, KV_HEADS, head, block_size, dtype=dtype)
    scales = [torch.zeros(NUM_BLOCKS, KV_HEADS, block_size) for _ in range(2)]
    return k, v, scales


def _write(writer, mode, key, value, caches, slots, scale):
    k_cache, v_cache, (ks, vs) = caches
    if mode == "bf16":
        writer(key, value, k_cache, v_cache, slots)
    elif mode == "per-tensor":
        writer(key, value, k_cache, v_cache, slots, scale, scale, ks, vs)
    else:
        writer(
            key,
            value,
            k_cache,
            v_cache,
            slots,
            k_dequant_scales=ks,
            v_dequant_scales=vs,
        )


def _stand_in(mode):
    c = contracts()

    def write(
        key,
        value,
        k_cache,
        v_cache,
        slots,
        k_scale=None,
        v_scale=None,
        k_dequant_scales=None,
        v_dequant_scales=None,
    ):
        if mode == "bf16":
            c.reshape_and_cache(
                key, value, k_cache, v_cache, slots, "auto", asm_layout=True
            )
        elif mode == "per-tensor":
            c.reshape_and_cache(
                key,
                value,
                k_cache,
                v_cache,
                slots,
                "fp8",
                k_scale,
                v_scale,
                asm_layout=True,
            )
            # ASM PA dequantises per token: the per-tensor scale at every slot.
            bs, live = k_cache.shape[3], slots[slots >= 0]
            k_dequant_scales[live // bs, :, live % bs] = k_scale.float()
            v_dequant_scales[live // bs, :, live % bs] = v_scale.float()
        else:
            c.reshape_and_cache_with_pertoken_quant(
                key,
                value,
                k_cache,
                v_cache,
                k_dequant_scales,
                v_dequant_scales,
                slots,
                True,
            )

    return write


# Block size 32 too: with FP8 (x = 16) and blocks of 16, the ASM V layout
# [block/x, head, x] is [1, head, 16], the same bytes as [head, block].
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head", [64, 128])
@pytest.mark.parametrize("mode,dtype", MODES, ids=[f"{m}-{d}" for m, d in MODES])
def test_writes_the_bytes_of_the_asm_layout_contract(mode, dtype, head, block_size):
    g = torch.Generator().manual_seed(head)
    shape = (9, KV_HEADS, head)
    if mode == "bf16":
        key, value = (torch.randn(shape, generator=g).bfloat16() for _ in range(2))
        scale = None
    else:
        (key, scale), (value, _) = (
            exact_fp8(shape, dtype, mode == "per-token", g) for _ in range(2)
        )
    # Scattered slots, one padding token (-1), slots in the second half of a block.
    slots = torch.tensor([3, 17, -1, 40, 41, 90, 5, 95, 8])
    ours, theirs = (_caches(dtype, head, block_size) for _ in range(2))
    _write(kv_cache_asm().reshape_and_cache_asm, mode, key, value, ours, slots, scale)
    _write(_stand_in(mode), mode, key, value, theirs, slots, scale)
    for a, b in zip(ours[:2], theirs[:2], strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    assert ours[0].view(torch.uint8).any()  # something was written
    if mode != "bf16":
        for a, b in zip(ours[2], theirs[2], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode,dtype", MODES, ids=[f"{m}-{d}" for m, d in MODES])
def test_cache_it_writes_decodes_to_plain_attention(mode, dtype):
    """A prefill of two sequences (5 and 11 tokens), then three decode steps, written by
    our kernel into shuffled blocks; ``pa_fwd_asm`` (stand-in) at every decode step
    equals softmax(q k^T / sqrt(d)) v over the sequence's own K/V."""
    head, q_heads = 128, 4
    g = torch.Generator().manual_seed(7)
    lens = [5, 11]
    steps = 3
    table = torch.randperm(NUM_BLOCKS, generator=g).to(torch.int32).view(2, 3)
    total = [n + steps for n in lens]
    if mode == "bf16":
        keys, vals = (
            [torch.randn(n, KV_HEADS, head, generator=g).bfloat16() for n in total]
            for _ in range(2)
        )
        scale = None
    else:  # quantising rounds nothing: what is compared is layout and scales
        per_token = mode == "per-token"
        keys, vals = (
            [exact_fp8((n, KV_HEADS, head), dtype, per_token, g)[0] for n in total]
            for _ in range(2)
        )
        scale = torch.tensor([2.0**-3])
    caches = _caches(dtype, head)
    write = kv_cache_asm().reshape_and_cache_asm

    def slots(seq, positions):
        pos = torch.as_tensor(positions)
        return table[seq, pos // BLOCK_SIZE].long() * BLOCK_SIZE + pos % BLOCK_SIZE

    for s, n in enumerate(lens):  # prefill
        _write(write, mode, keys[s][:n], vals[s][:n], caches, slots(s, range(n)), scale)
    for step in range(steps):
        pos = [n + step for n in lens]
        new_k = torch.stack([keys[s][p] for s, p in enumerate(pos)])
        new_v = torch.stack([vals[s][p] for s, p in enumerate(pos)])
        sl = torch.cat([slots(s, [p]) for s, p in enumerate(pos)])
        _write(write, mode, new_k, new_v, caches, sl, scale)
        q = torch.randn(2, q_heads, head, generator=g).bfloat16()
        ctx = torch.tensor([p + 1 for p in pos], dtype=torch.int32)
        k_cache, v_cache, (ks, vs) = caches
        out = contracts().pa_fwd_asm(
            q,
            k_cache,
            v_cache,
            table,
            ctx,
            table.stride(0),
            K_QScale=None if mode == "bf16" else ks,
            V_QScale=None if mode == "bf16" else vs,
        )
        for s, p in enumerate(pos):
            want = attention(
                q[s : s + 1], keys[s][: p + 1], vals[s][: p + 1], 1 / math.sqrt(head)
            )
            torch.testing.assert_close(
                out[s : s + 1].double(), want, atol=2e-2, rtol=1e-2
            )


def test_fp8_cache_without_scales_is_refused():
    k_cache, v_cache, _ = _caches(torch.float8_e4m3fnuz, 64)
    key = torch.randn(1, KV_HEADS, 64).bfloat16()
    with pytest.raises(ValueError, match="needs k_scale"):
        kv_cache_asm().reshape_and_cache_asm(
            key, key, k_cache, v_cache, torch.tensor([0])
        )
