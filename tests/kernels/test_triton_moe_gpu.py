"""GPU tests of the Triton FP8 MoE pipeline at real sizes (marker ``gpu``).

Same checks as the CPU tests (float64 reference of the dequantised problem, and a
reference emulating the activation quantisation), at DeepSeek-V3-like and
Mixtral-like sizes, M from 1 to 8192. Bounds: see test_triton_moe.py.
"""

from __future__ import annotations

import pytest
import torch

try:  # tests/ is a package in this repository; also runnable as loose files
    from .moe_reference import (
        emulated_quantisation,
        intermediate_amax,
        load_triton_moe,
        make_problem,
        moe_reference,
        rel_err,
    )
except ImportError:
    from moe_reference import (
        emulated_quantisation,
        intermediate_amax,
        load_triton_moe,
        make_problem,
        moe_reference,
        rel_err,
    )

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU"),
]

FULL_TOL = 8e-2
# Issue 5's kernel-only bar. Measured on the H100: 1.7-3.8e-3; GEMM1 products
# chained in the tensor cores over K=4096 (reduced-precision FP8 accumulation)
# gave 1.0-1.2e-2.
KERNEL_TOL = 5e-3

SHAPES = {
    # name: (E, top_k, K hidden, N intermediate, scale mode)
    "dsv3-tp8": (256, 8, 7168, 256, "block"),
    "dsv3-ep1": (256, 8, 7168, 2048, "block"),
    "mixtral": (8, 2, 4096, 14336, "tensor"),
    "mixtral-channel": (8, 2, 4096, 14336, "channel"),
}
MS = [1, 7, 64, 512, 8192]

_PROBLEMS: dict = {}

try:
    from .moe_reference import quant_groups_ref as _quant_groups_ref
except ImportError:
    from moe_reference import quant_groups_ref as _quant_groups_ref


@pytest.fixture(scope="module")
def tm():
    return load_triton_moe("atom_ckfree_triton_moe_gpu", interpret=False)


def _fp8():
    if (
        torch.version.hip is not None
        and "gfx94" in torch.cuda.get_device_properties(0).gcnArchName
    ):
        return torch.float8_e4m3fnuz
    return torch.float8_e4m3fn


def _problem(name, M):
    E, top_k, K, N, mode = SHAPES[name]
    key = (name, M)
    if key not in _PROBLEMS:
        _PROBLEMS.clear()
        _PROBLEMS[key] = make_problem(
            M, K, N, E, top_k, fp8_dtype=_fp8(), scale_mode=mode, seed=M, device="cuda"
        )
    return _PROBLEMS[key]


@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_real_sizes(tm, name, M):
    x, w13, w2, tw, ti, s13, s2, bs = _problem(name, M)
    out = tm.fused_moe_fp8(
        x, w13, w2, tw, ti, w13_scale=s13, w2_scale=s2, block_shape=bs
    )
    torch.cuda.synchronize()
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all())
    ref = moe_reference(x, w13, w2, tw, ti, s13, s2, bs)
    assert rel_err(out, ref) < FULL_TOL


@pytest.mark.parametrize("name", ["dsv3-tp8", "mixtral"])
@pytest.mark.parametrize(
    "cfg",
    [
        {"quant_x": True, "quant_h": True, "reduce": "buffer", "block_m": 64},
        {"quant_x": False, "quant_h": False, "reduce": "atomic", "split_k2": 2},
        {"quant_x": False, "quant_h": True, "split_k1": 4, "split_k2": 4},
        {"quant_x": True, "quant_h": True, "split_k1": 8, "block_m": 16, "bn1": 32},
        {
            "quant_x": True,
            "quant_h": True,
            "reduce": "buffer",
            "block_m": 64,
            "bm2": 32,
            "persistent2": 2,
            "tma2": True,
        },
    ],
    ids=[
        "prequant-buffer",
        "inline-atomic",
        "splitk1-inline",
        "splitk1-prequant",
        "persistent-tma-buffer",
    ],
)
@pytest.mark.parametrize("M", [4, 64])
def test_kernel_error_vs_emulating_reference(tm, name, cfg, M):
    x, w13, w2, tw, ti, s13, s2, bs = _problem(name, M)
    E, top_k, K, N, _mode = SHAPES[name]
    heuristic = tm.select_moe_config("", E, N, K, M, num_cols=top_k).config
    full = dict(heuristic.as_dict(), **cfg)
    out = tm.fused_moe_fp8(
        x, w13, w2, tw, ti, w13_scale=s13, w2_scale=s2, block_shape=bs, config=full
    )
    emulated = emulated_quantisation(full, x.shape[1], bs, x.dtype)
    ref = moe_reference(x, w13, w2, tw, ti, s13, s2, bs, **emulated)
    assert rel_err(out, ref) < KERNEL_TOL


def test_split_k_partials_past_int32_offsets(tm):
    # Mixtral at M=8192 with 8 GEMM1 splits: the fp32 partial buffer holds more
    # than 2**31 elements (split offsets once overflowed int32: illegal address).
    x, w13, w2, tw, ti, s13, s2, bs = _problem("mixtral", 8192)
    cfg = dict(tm.select_moe_config("", 8, 14336, 4096, 8192).config.as_dict())
    cfg["split_k1"] = 8
    out = tm.fused_moe_fp8(
        x, w13, w2, tw, ti, w13_scale=s13, w2_scale=s2, block_shape=bs, config=cfg
    )
    torch.cuda.synchronize()
    ref = moe_reference(x, w13, w2, tw, ti, s13, s2, bs)
    assert rel_err(out, ref) < FULL_TOL


def test_graph_capture_and_poisoned_output(tm):
    x, w13, w2, tw, ti, s13, s2, bs = _problem("dsv3-tp8", 7)

    def run():
        return tm.fused_moe_fp8(
            x, w13, w2, tw, ti, w13_scale=s13, w2_scale=s2, block_shape=bs
        )

    eager = run()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static = run()
    static.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    # Same inputs: identical up to the order of fp32 atomic additions.
    assert rel_err(static, eager.to(torch.float64)) < 1e-2


@pytest.mark.parametrize("n", [1 << 23, 3 * (1 << 20) + 128 * 5])
def test_group_quant_gpu(tm, n):
    x = torch.randn(n // 7168 + 1, 7168, device="cuda", dtype=torch.bfloat16)
    q, s = tm.per_token_group_quant_fp8(x, 128, _fp8())
    q_ref, s_ref = _quant_groups_ref(x, 128, _fp8())
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    mism = (q.view(torch.uint8) != q_ref.view(torch.uint8)).float().mean().item()
    assert mism < 1e-4  # division rounding may flip a rare last bit


@pytest.mark.parametrize("M", [7, 512, 8192])
def test_static_scales_kernel_error(tm, M):
    # Mixtral with static activation scales (the amax of this input and of the
    # float64 intermediate of the first 64 tokens): against a reference that
    # quantises with the same scales. (chain2, GEMM2's K steps chained in the
    # tensor cores, measured 5.2e-3 here on the H200 at M=512 and 8192: the
    # reduced-precision FP8 accumulation of sm_90 over K=14336; not selected.)
    x, w13, w2, tw, ti, s13, s2, bs = _problem("mixtral", M)
    n = min(M, 64)
    fmax = torch.finfo(w13.dtype).max
    a13 = x.float().abs().amax().item() / fmax
    a2 = intermediate_amax(x[:n], w13, ti[:n], s13, bs) / fmax
    cfg = tm.select_moe_config(
        tm.device_info(x.device), 8, 14336, 4096, M, num_cols=2, static_scales=True
    ).config.as_dict()
    cfg["chain2"] = False
    out = tm.fused_moe_fp8(
        x,
        w13,
        w2,
        tw,
        ti,
        w13_scale=s13,
        w2_scale=s2,
        a13_scale=torch.tensor([a13], device="cuda"),
        a2_scale=torch.tensor([a2], device="cuda"),
        config=cfg,
    )
    ref = moe_reference(
        x[:n], w13, w2, tw[:n], ti[:n], s13, s2, bs, x_static=a13, h_static=a2
    )
    assert rel_err(out[:n], ref) < KERNEL_TOL
