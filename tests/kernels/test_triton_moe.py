"""CPU tests of the portable Triton FP8 MoE pipeline (overlay/atom/model_ops/triton_moe.py).

The kernels run under the Triton interpreter (TRITON_INTERPRET=1, set before the
module is loaded) on small shapes.

Error bounds
------------
* Against the float64 reference of the *dequantised* problem (weights exactly as
  stored, activations unquantised): the pipeline quantises the input and the
  intermediate to e4m3 (3 mantissa bits, round to nearest even), a relative
  rounding error of at most 2**-4 = 6.25 % per element and about 2-3 % RMS; two
  such roundings add in quadrature to ~3-4 % norm-wise (the peer's
  measured 4-5e-2 is the same effect). Bound: FULL_TOL = 8e-2, which the
  ordering/accumulation differences can never approach but a wrong scale
  (>= 2x), a wrong expert or a missing column fails by far (>> 10 %).
* Against a reference that *emulates* the activation quantisation (same groups,
  same RNE): what is left is float32 accumulation order and the rare element
  whose FP8 rounding flips because its float32 value lies within accumulation
  noise of a rounding boundary. Bound: KERNEL_TOL = 1e-2 (measured ~1e-3).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

try:  # tests/ is a package in this repository; also runnable as loose files
    from .moe_reference import (
        emulated_quantisation,
        intermediate_amax,
        load_triton_moe,
        make_problem,
        moe_reference,
        quant_groups_ref,
        rel_err,
    )
except ImportError:
    from moe_reference import (
        emulated_quantisation,
        intermediate_amax,
        load_triton_moe,
        make_problem,
        moe_reference,
        quant_groups_ref,
        rel_err,
    )

tm = load_triton_moe("atom_ckfree_triton_moe_interp", interpret=True)

FULL_TOL = 8e-2
KERNEL_TOL = 1e-2
FP8_DTYPES = [torch.float8_e4m3fn, torch.float8_e4m3fnuz]


def _run(prob, **kw):
    x, w13, w2, tw, ti, s13, s2, bs = prob
    return tm.fused_moe_fp8(
        x, w13, w2, tw, ti, w13_scale=s13, w2_scale=s2, block_shape=bs, **kw
    )


def _ref(prob, **kw):
    x, w13, w2, tw, ti, s13, s2, bs = prob
    return moe_reference(x, w13, w2, tw, ti, s13, s2, bs, **kw)


# ----------------------------------------------------------------------------------
# Alignment
# ----------------------------------------------------------------------------------
def _check_alignment(ids, block_m, E):
    al = tm.moe_align_block_size(ids, block_m, E)
    flat = ids.reshape(-1).to(torch.int64)
    numel = flat.numel()
    counts = torch.bincount(flat, minlength=E)
    padded = (counts + block_m - 1) // block_m * block_m
    total = int(padded.sum())
    assert int(al.num_tokens_post_padded[0]) == total
    assert al.sorted_token_ids.numel() >= total
    assert al.expert_ids.numel() * block_m >= total
    sorted_ids = al.sorted_token_ids[:total].to(torch.int64)
    start = 0
    for e in range(E):
        seg = sorted_ids[start : start + int(padded[e])]
        real = seg[seg < numel]
        assert torch.equal(torch.sort(real).values, (flat == e).nonzero().flatten())
        assert bool((seg[len(real) :] == numel).all()), "padding must be the sentinel"
        assert bool((seg[: len(real)] < numel).all()), "real entries come first"
        blocks = al.expert_ids[start // block_m : (start + int(padded[e])) // block_m]
        assert bool((blocks == e).all())
        start += int(padded[e])
    nblk = total // block_m
    assert bool((al.expert_ids[nblk:] == -1).all())


@pytest.mark.parametrize(
    "M,C,E,block_m",
    [
        (1, 1, 4, 16),
        (1, 9, 256, 16),
        (7, 2, 8, 16),
        (32, 8, 256, 128),
        (33, 8, 64, 32),
        (300, 4, 16, 64),
        (600, 8, 256, 64),
    ],
)
def test_align_random(M, C, E, block_m):
    g = torch.Generator().manual_seed(M * 1000 + E)
    ids = torch.stack([torch.randperm(E, generator=g)[:C] for _ in range(M)])
    _check_alignment(ids.to(torch.int32), block_m, E)


def test_align_large_path_matches_contract():
    # More than 256 entries: the two-launch path (the small one is covered above).
    g = torch.Generator().manual_seed(7)
    ids = torch.stack([torch.randperm(32, generator=g)[:4] for _ in range(80)])
    _check_alignment(ids.to(torch.int32), 16, 32)


def test_align_zeroes_the_counter_buffer():
    ids = torch.tensor([[1, 2], [2, 0]], dtype=torch.int32)
    for n in (3, 300):  # small and two-launch paths
        big = torch.cat([ids] * (1 if n == 3 else 80))
        buf = torch.full((n,), 7, dtype=torch.int32)
        tm.moe_align_block_size(big, 16, 4, zero_buf=buf)
        assert bool((buf == 0).all())


def test_align_duplicates_and_int64():
    # Top-k duplicates across tokens, experts with no tokens, int64 ids.
    ids = torch.tensor([[3, 3], [3, 0], [3, 0], [0, 3]], dtype=torch.int64)
    _check_alignment(ids, 16, 6)


def test_align_all_on_one_expert():
    ids = torch.full((40, 1), 5, dtype=torch.int32)
    _check_alignment(ids, 16, 8)


def test_align_rejects_bad_args():
    with pytest.raises(TypeError):
        tm.moe_align_block_size(torch.zeros(2, 2), 16, 4)
    with pytest.raises(ValueError):
        tm.moe_align_block_size(torch.zeros(2, 2, dtype=torch.int32), 24, 4)


# ----------------------------------------------------------------------------------
# Per-token-group quantisation
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fp8", FP8_DTYPES)
@pytest.mark.parametrize("src", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("group", [128, 64])
def test_group_quant_matches_reference(fp8, src, group):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 256, generator=g) * torch.logspace(-3, 3, 256)
    x[1, :] = 0.0  # all-zero groups must give zeros, not NaN
    x[2, 7] = -1e-6
    x[3] = torch.linspace(-130, 130, 256)  # crosses binades at every rounding
    x = x.to(src)
    q, s = tm.per_token_group_quant_fp8(x, group, fp8)
    q_ref, s_ref = quant_groups_ref(x, group, fp8)
    assert q.dtype == fp8 and s.dtype == torch.float32
    assert s.shape == (5, 256 // group)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_group_quant_errors():
    x = torch.randn(4, 100, dtype=torch.bfloat16)
    with pytest.raises(ValueError):
        tm.per_token_group_quant_fp8(x, 128)
    with pytest.raises(TypeError):
        tm.per_token_group_quant_fp8(x.to(torch.int32), 4)
    with pytest.raises(TypeError):
        tm.per_token_group_quant_fp8(x, 4, torch.bfloat16)
    with pytest.raises(ValueError):
        tm.per_token_group_quant_fp8(x[0], 4)


# ----------------------------------------------------------------------------------
# Whole pipeline
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fp8", FP8_DTYPES)
@pytest.mark.parametrize("mode", ["tensor", "channel", "block"])
def test_pipeline_scale_modes(fp8, mode):
    # N=192 is not a multiple of the 128 block: partial scale blocks are exercised.
    prob = make_problem(9, 256, 192, 8, 2, fp8_dtype=fp8, scale_mode=mode, seed=3)
    out = _run(prob)
    assert out.shape == (9, 256) and out.dtype == torch.bfloat16
    assert rel_err(out, _ref(prob)) < FULL_TOL


@pytest.mark.parametrize("layout", ["E1", "E2", "scalar", "E2N1"])
def test_pipeline_scale_layouts(layout):
    E, N, K = 4, 64, 128
    prob = make_problem(6, K, N, E, 2, scale_mode="tensor", seed=4)
    x, w13, w2, tw, ti, s13, s2, bs = prob
    if layout == "E1":
        s13, s2 = s13[:, None], s2[:, None]
    elif layout == "E2":
        s13 = torch.stack([s13, 2 * s13], dim=1)  # distinct (gate, up) scalars
    elif layout == "scalar":
        s13, s2 = s13[:1].reshape(()), s2[0]
    else:
        s13 = s13[:, None, None].expand(E, 2 * N, 1).contiguous()
        s2 = s2[:, None, None].expand(E, K, 1).contiguous()
    prob = (x, w13, w2, tw, ti, s13, s2, bs)
    assert rel_err(_run(prob), _ref(prob)) < FULL_TOL


@pytest.mark.parametrize(
    "cfg",
    [
        {
            "quant_x": True,
            "quant_h": True,
            "reduce": "buffer",
            "bk1": 64,
            "bn1": 64,
            "bk2": 64,
        },
        {"quant_x": False, "quant_h": False, "reduce": "atomic", "split_k2": 2},
        {"quant_x": False, "quant_h": True, "split_k1": 2, "split_k2": 2},
        {"quant_x": True, "quant_h": False, "split_k1": 3, "reduce": "buffer"},
        # Tiles narrow enough for one block scale each (scalar scale loads).
        {"quant_h": True, "bn1": 32, "bn2": 64},
        # GEMM2 on a persistent grid (8 programs here, several tiles each), in
        # 8-row tiles of the 16-row alignment blocks, operands through tensor
        # descriptors.
        {
            "quant_x": True,
            "quant_h": True,
            "reduce": "buffer",
            "persistent2": 2,
            "bm2": 8,
            "tma2": True,
        },
        {"quant_h": True, "persistent2": 1, "split_k2": 2},
    ],
    ids=[
        "prequant-buffer",
        "inline-splitk",
        "splitk1-fp8h",
        "splitk1-bf16h",
        "scalar-block-scale",
        "persistent-tma-buffer",
        "persistent-splitk-atomic",
    ],
)
@pytest.mark.parametrize("mode", ["tensor", "block"])
def test_pipeline_kernel_error_vs_emulating_reference(cfg, mode):
    # Kernel-only error: the reference quantises the activations exactly as the
    # configuration does (x in groups of 128 or bk1, the intermediate in groups of
    # bn1 or bk2), so only accumulation order and boundary flips remain.
    prob = make_problem(
        12, 256, 128, 4, 2, scale_mode=mode, block_shape=(64, 64), seed=5
    )
    full = dict(tm._INTERPRETER_CONFIG.as_dict(), **cfg)
    out = _run(prob, config=full)
    ref = _ref(prob, **emulated_quantisation(full, 256, prob[-1], torch.bfloat16))
    assert rel_err(out, ref) < KERNEL_TOL
    assert rel_err(out, _ref(prob)) < FULL_TOL


def test_gemm2_tiles_of_padding_rows_only():
    # 8-row GEMM2 tiles of 16-row alignment blocks. Expert counts 3, 9, 17 and 1
    # give tiles of padding rows only, tiles with one valid row among padding,
    # and a second block holding one row.
    prob = make_problem(
        15, 256, 128, 4, 2, scale_mode="block", block_shape=(64, 64), seed=9
    )
    ids = torch.repeat_interleave(torch.arange(4), torch.tensor([3, 9, 17, 1]))
    order = torch.randperm(30, generator=torch.Generator().manual_seed(9))
    prob = (*prob[:4], ids[order].reshape(15, 2).to(prob[4].dtype), *prob[5:])
    cfg = dict(
        tm._INTERPRETER_CONFIG.as_dict(),
        quant_x=True,
        quant_h=True,
        reduce="buffer",
        persistent2=2,
        bm2=8,
    )
    out = _run(prob, config=cfg)
    ref = _ref(prob, **emulated_quantisation(cfg, 256, prob[-1], torch.bfloat16))
    assert rel_err(out, ref) < KERNEL_TOL


def _static_scales(prob, margin=1.0):
    # Calibrated static scales: amax of the input and of the float64 intermediate.
    x, w13, _w2, _tw, ti, s13, _s2, bs = prob
    fmax = torch.finfo(w13.dtype).max
    a13 = x.float().abs().amax().item() / fmax * margin
    a2 = intermediate_amax(x, w13, ti, s13, bs) / fmax * margin
    return a13, a2


@pytest.mark.parametrize("chain2", [False, True])
@pytest.mark.parametrize("mode", ["tensor", "channel", "block"])
def test_static_activation_scales(mode, chain2):
    # The checkpoint's per-tensor activation scales: x and the intermediate are
    # quantised with them (no amax), per-tensor/channel weights scale once after
    # the K loop in both GEMMs. Against a reference quantising the same way.
    prob = make_problem(10, 256, 128, 4, 2, scale_mode=mode, seed=13)
    a13, a2 = _static_scales(prob)
    cfg = dict(tm._INTERPRETER_CONFIG.as_dict(), chain2=chain2)
    out = _run(
        prob,
        a13_scale=torch.tensor(a13),
        a2_scale=torch.full((4,), a2),  # one per expert: the largest is used
        config=cfg,
    )
    ref = _ref(prob, x_static=a13, h_static=a2)
    assert rel_err(out, ref) < KERNEL_TOL
    assert rel_err(out, _ref(prob)) < FULL_TOL
    # The given scale is the one used: a reference with a quarter of it
    # (saturating the largest values) is far off.
    assert rel_err(out, _ref(prob, x_static=a13, h_static=a2 / 4)) > 5 * KERNEL_TOL


def test_static_scale_errors():
    prob = make_problem(4, 128, 64, 4, 2)
    _bad(prob, TypeError, a13_scale=torch.ones(1, dtype=torch.int32))
    _bad(prob, ValueError, a2_scale=torch.ones(0))
    _bad(prob, TypeError, a13_scale=1.0)


def test_static_quant_matches_reference():
    x = torch.randn(5, 256).to(torch.bfloat16) * 3
    scale = torch.tensor([0.004])  # saturates the largest values
    q = tm.static_quant_fp8(x, scale)
    fmax = torch.finfo(torch.float8_e4m3fn).max
    want = (x.float() / scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn)
    assert torch.equal(q.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("mode", ["tensor", "channel", "block"])
def test_per_token_x_scales(mode):
    # x_per_token: one x scale per token (no per-K-step scaling) with per-tensor
    # or per-channel weights; block scales keep their 128-column groups.
    prob = make_problem(
        12, 256, 128, 4, 2, scale_mode=mode, block_shape=(64, 64), seed=8
    )
    cfg = dict(
        tm._INTERPRETER_CONFIG.as_dict(), quant_x=True, quant_h=True, x_per_token=True
    )
    out = _run(prob, config=cfg)
    x_group = 128 if mode == "block" else 256
    ref = _ref(prob, x_group=x_group, h_group=cfg["bn1"])
    assert rel_err(out, ref) < KERNEL_TOL
    assert rel_err(out, _ref(prob)) < FULL_TOL
    if mode != "block":  # per-token scales: measurably not the 128-group result
        assert rel_err(out, _ref(prob, x_group=128, h_group=cfg["bn1"])) > 1e-3


def test_tma_descriptors_only_for_dense_aligned_operands():
    fp8 = torch.float8_e4m3fn
    h = torch.zeros(64, 128, dtype=fp8)
    w2 = torch.zeros(4, 256, 128, dtype=fp8)
    h_desc, w_desc = tm._tma_descriptors(h, w2, (16, 64), (128, 64))
    assert tuple(h_desc.shape) == (64, 128) and list(h_desc.block_shape) == [16, 64]
    assert tuple(w_desc.shape) == (4 * 256, 128)
    assert list(w_desc.block_shape) == [128, 64]
    # Row strides that are no multiple of 16 bytes, non-dense weights: pointers.
    h_odd = torch.zeros(64, 120, dtype=fp8)
    assert tm._tma_descriptors(h_odd, w2, (16, 64), (128, 64)) == (None, None)
    w2_t = torch.zeros(4, 128, 256, dtype=fp8).transpose(1, 2)
    assert tm._tma_descriptors(h, w2_t, (16, 64), (128, 64)) == (None, None)


def test_m_equals_one():
    prob = make_problem(1, 128, 64, 16, 4, seed=6)
    assert rel_err(_run(prob), _ref(prob)) < FULL_TOL


def test_experts_without_tokens_and_top1():
    # 3 tokens, 16 experts, top-1: most experts get nothing; direct store path.
    prob = make_problem(3, 128, 64, 16, 1, seed=7)
    assert rel_err(_run(prob), _ref(prob)) < FULL_TOL


def test_all_tokens_on_one_expert():
    x, w13, w2, tw, ti, s13, s2, bs = make_problem(20, 128, 64, 4, 1, seed=8)
    ti = torch.full_like(ti, 2)
    tw = torch.rand(20, 1, generator=torch.Generator().manual_seed(0)) + 0.5
    prob = (x, w13, w2, tw, ti, s13, s2, bs)
    assert rel_err(_run(prob), _ref(prob)) < FULL_TOL


def test_shared_expert_column_fp16():
    prob = make_problem(
        5, 128, 64, 9, 2, n_shared=1, act_dtype=torch.float16, scale_mode="channel"
    )
    assert prob[4].shape == (5, 3)
    out = _run(prob, num_fused_shared_experts=1)
    assert out.dtype == torch.float16
    assert rel_err(out, _ref(prob)) < FULL_TOL


def test_empty_batch():
    x, w13, w2, tw, ti, s13, s2, _bs = make_problem(2, 128, 64, 4, 2)
    out = tm.fused_moe_fp8(x[:0], w13, w2, tw[:0], ti[:0], w13_scale=s13, w2_scale=s2)
    assert out.shape == (0, 128)


# ----------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------
def _bad(prob, exc, **changes):
    x, w13, w2, tw, ti, s13, s2, bs = prob
    args = {
        "hidden_states": x,
        "w13": w13,
        "w2": w2,
        "topk_weights": tw,
        "topk_ids": ti,
        "w13_scale": s13,
        "w2_scale": s2,
        "block_shape": bs,
    }
    args.update(changes)
    pos = [
        args.pop(k) for k in ("hidden_states", "w13", "w2", "topk_weights", "topk_ids")
    ]
    with pytest.raises(exc):
        tm.fused_moe_fp8(*pos, **args)


def test_errors():
    prob = make_problem(4, 128, 64, 4, 2)
    x, w13, w2, tw, ti, s13, _s2, _bs = prob
    _bad(prob, TypeError, hidden_states=x.float())
    _bad(prob, TypeError, w13=w13.to(torch.bfloat16))
    _bad(prob, TypeError, w2=w2.view(torch.int8))
    _bad(prob, TypeError, w2=w2.to(torch.float8_e5m2), w13=w13.to(torch.float8_e5m2))
    _bad(prob, TypeError, w2=w2.float().to(torch.float8_e4m3fnuz))
    _bad(prob, TypeError, topk_ids=ti.float())
    _bad(prob, TypeError, w13_scale=s13.to(torch.int32))
    _bad(prob, ValueError, hidden_states=x[:, :64])
    _bad(prob, ValueError, w13=w13[:, :127])
    _bad(prob, ValueError, w2=w2[:, :, :32])
    _bad(prob, ValueError, topk_ids=ti[:3])
    _bad(prob, ValueError, topk_weights=tw[:, :1])
    _bad(prob, ValueError, w13_scale=torch.ones(3))
    _bad(prob, ValueError, w2_scale=torch.ones(4, 5))
    _bad(prob, ValueError, block_shape=(128, 128))  # per-tensor scales with blocks
    _bad(prob, ValueError, block_shape=(128, 100))
    _bad(prob, ValueError, num_fused_shared_experts=2)
    _bad(prob, ValueError, hidden_states=x[None])
    # GEMM2 tiles must split the alignment blocks evenly.
    _bad(prob, ValueError, config=dict(tm._INTERPRETER_CONFIG.as_dict(), bm2=12))
