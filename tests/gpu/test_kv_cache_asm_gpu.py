"""The ASM-layout KV cache writer on a GPU: random data, the bytes of the stand-ins.

On the GPU the float32 -> FP8 cast rounds to nearest even, as torch does, so random
data (not only the exactly quantisable data of the CPU tests) must give the bytes of
the ``reshape_and_cache(asm_layout=True)`` / ``..._with_pertoken_quant`` stand-ins,
computed by torch on the CPU. Run with ``-m gpu`` and ``TRITON_INTERPRET=0``.
"""

from __future__ import annotations

import pytest
import torch

from tests.aiter.overlay_modules import contracts, load_overlay

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]

# float8_e4m3fn: the GPU's FP8 here (an H200); gfx942 uses float8_e4m3fnuz.
FP8 = torch.float8_e4m3fn
NUM_BLOCKS, KV_HEADS = 64, 8


@pytest.fixture(scope="module")
def writer():
    mod = load_overlay("atom/model_ops/kv_cache_asm.py", "kv_cache_asm_gpu", False)
    return mod.reshape_and_cache_asm


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head", [64, 128])
@pytest.mark.parametrize("mode", ["bf16", "fp8-per-tensor", "fp8-per-token"])
def test_random_data_gives_the_stand_in_bytes(writer, mode, head, block_size):
    g = torch.Generator().manual_seed(head + block_size)
    dtype = torch.bfloat16 if mode == "bf16" else FP8
    x = 16 // torch.empty(0, dtype=dtype).element_size()
    tokens = 300
    key, value = (
        (torch.randn(tokens, KV_HEADS, head, generator=g) * 3).bfloat16() for _ in "kv"
    )
    slots = torch.randperm(NUM_BLOCKS * block_size, generator=g)[:tokens]
    slots[::37] = -1  # padding tokens
    scale = torch.tensor([0.0473])  # |x| / scale stays inside FP8 range (no NaN)
    caches = []
    for dev in ("cuda", "cpu"):
        k = torch.zeros(NUM_BLOCKS, KV_HEADS, head // x, block_size, x, dtype=dtype)
        v = torch.zeros(NUM_BLOCKS, KV_HEADS, head, block_size, dtype=dtype)
        ks, vs = (torch.zeros(NUM_BLOCKS, KV_HEADS, block_size) for _ in "kv")
        caches.append([t.to(dev) for t in (k, v, ks, vs)])
    (k, v, ks, vs), (rk, rv, rks, rvs) = caches
    args = [t.cuda() for t in (key, value)]
    c = contracts()
    if mode == "bf16":
        writer(*args, k, v, slots.cuda())
        c.reshape_and_cache(key, value, rk, rv, slots, "auto", asm_layout=True)
    elif mode == "fp8-per-tensor":
        writer(*args, k, v, slots.cuda(), scale.cuda(), scale.cuda())
        c.reshape_and_cache(key, value, rk, rv, slots, "fp8", scale, scale, True)
    else:
        writer(*args, k, v, slots.cuda(), k_dequant_scales=ks, v_dequant_scales=vs)
        c.reshape_and_cache_with_pertoken_quant(
            key, value, rk, rv, rks, rvs, slots, True
        )
    torch.cuda.synchronize()
    assert torch.equal(k.cpu().view(torch.uint8), rk.view(torch.uint8))
    assert torch.equal(v.cpu().view(torch.uint8), rv.view(torch.uint8))
    if mode == "fp8-per-token":
        assert torch.equal(ks.cpu(), rks) and torch.equal(vs.cpu(), rvs)
