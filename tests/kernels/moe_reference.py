"""Independent float64 references for the Triton FP8 MoE pipeline tests.

Nothing here calls the module under test: references are written directly from the
mathematical definition (dequantised weights, SiLU(gate) * up, weighted top-k sum).
"""

from __future__ import annotations

import pathlib
import sys

import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks and build subprocesses import this file too
    sys.path.insert(0, str(REPO))

from tests.tools import load_overlay


def load_triton_moe(name: str, interpret: bool):
    """overlay/atom/model_ops/triton_moe.py as module ``name``, its kernels built for
    the Triton interpreter or not."""
    return load_overlay("atom/model_ops/triton_moe.py", name, interpret)


def dequant_weight(w, scale, block_shape=None):
    """[E, R, C] fp8 weights * scales -> float64 (all supported scale layouts)."""
    E, R, C = w.shape
    wf = w.to(torch.float64)
    s = scale.to(torch.float64)
    if block_shape is not None:
        bn, bk = block_shape
        s = s.repeat_interleave(bn, dim=1)[:, :R].repeat_interleave(bk, dim=2)
        return wf * s[:, :, :C]
    if s.numel() == 1:
        return wf * s.reshape(())
    s2 = s.reshape(E, -1)
    if s2.shape[1] == 1:
        return wf * s2[:, :, None]
    if s2.shape[1] == 2 and R != 2:  # per-tensor (gate, up) pair
        half = R // 2
        out = wf.clone()
        out[:, :half] *= s2[:, 0, None, None]
        out[:, half:] *= s2[:, 1, None, None]
        return out
    return wf * s2[:, :, None]


def quant_groups_ref(x, group, fp8_dtype):
    """Reference per-(row, group) quantisation: returns (fp8 q, float32 scales)."""
    M, K = x.shape
    fmax = torch.finfo(fp8_dtype).max
    xg = x.to(torch.float32).reshape(M, K // group, group)
    amax = xg.abs().amax(dim=2)
    s = amax.clamp(min=1e-10) / fmax
    q = (xg / s[:, :, None]).clamp(-fmax, fmax).to(fp8_dtype)
    return q.reshape(M, K), s


def qdq(x, group, fp8_dtype):
    """Quantise-dequantise per (row, group), padding K up to a group multiple."""
    M, K = x.shape
    pad = (-K) % group
    xp = torch.nn.functional.pad(x.to(torch.float32), (0, pad))
    q, s = quant_groups_ref(xp, group, fp8_dtype)
    d = q.to(torch.float64).reshape(M, -1, group) * s.to(torch.float64)[:, :, None]
    return d.reshape(M, -1)[:, :K]


def qdq_static(x, scale, fp8_dtype):
    """Quantise-dequantise with one given scale (static activation scales)."""
    fmax = torch.finfo(fp8_dtype).max
    q = (x.to(torch.float32) / scale).clamp(-fmax, fmax).to(fp8_dtype)
    return q.to(torch.float64) * scale


def moe_reference(
    x,
    w13,
    w2,
    topk_weights,
    topk_ids,
    w13_scale,
    w2_scale,
    block_shape=None,
    x_group=None,
    h_group=None,
    h_dtype=None,
    x_static=None,
    h_static=None,
):
    """float64 MoE of the dequantised problem.

    With ``x_group``/``h_group`` the activations (input / intermediate) are
    quantised per (row, group) first, emulating the pipeline's FP8 activations;
    ``h_dtype`` rounds the intermediate to that dtype before (a bf16 intermediate).
    ``x_static``/``h_static`` (floats): quantised with that one scale instead.
    """
    fp8 = w13.dtype
    N = w13.shape[1] // 2
    if x_static is not None:
        xd = qdq_static(x, x_static, fp8)
    else:
        xd = qdq(x, x_group, fp8) if x_group else x.to(torch.float64)
    M = topk_ids.shape[0]
    out = torch.zeros(M, x.shape[1], dtype=torch.float64, device=x.device)

    def one(scale, e):  # the scales of expert e, keeping the layout recognisable
        if scale.numel() == 1:
            return scale.reshape(1)
        return scale[e : e + 1]

    for e in torch.unique(topk_ids).tolist():
        # Dequantise one expert at a time: real sizes do not fit in float64 whole.
        W13 = dequant_weight(w13[e : e + 1], one(w13_scale, e), block_shape)[0]
        W2 = dequant_weight(w2[e : e + 1], one(w2_scale, e), block_shape)[0]
        tok, col = (topk_ids == e).nonzero(as_tuple=True)
        gu = xd[tok] @ W13.T
        h = torch.nn.functional.silu(gu[:, :N]) * gu[:, N:]
        if h_dtype is not None:
            h = h.to(h_dtype).to(torch.float64)
        if h_static is not None:
            h = qdq_static(h, h_static, fp8)
        elif h_group:
            h = qdq(h, h_group, fp8)
        y = (h @ W2.T) * topk_weights[tok, col].to(torch.float64)[:, None]
        out.index_add_(0, tok, y)
    return out


def intermediate_amax(x, w13, topk_ids, w13_scale, block_shape=None):
    """Largest |silu(gate) * up| of the float64 intermediate over the routed
    (token, expert) pairs: what a static intermediate scale is calibrated on."""
    N = w13.shape[1] // 2
    amax = 0.0
    for e in torch.unique(topk_ids).tolist():
        s = w13_scale.reshape(1) if w13_scale.numel() == 1 else w13_scale[e : e + 1]
        W13 = dequant_weight(w13[e : e + 1], s, block_shape)[0]
        tok = (topk_ids == e).nonzero(as_tuple=True)[0]
        gu = x[tok].to(torch.float64) @ W13.T
        h = torch.nn.functional.silu(gu[:, :N]) * gu[:, N:]
        amax = max(amax, h.abs().max().item())
    return amax


def emulated_quantisation(cfg, K, block_shape, act_dtype):
    """moe_reference keywords that quantise the activations as the pipeline does
    under launch configuration ``cfg`` (hidden size ``K``): x per token or per
    128 columns (separate pass) or per GEMM1 K step (prologue), the intermediate
    per GEMM1 column tile (FP8) or in ``act_dtype`` per GEMM2 K step."""
    sbk = block_shape[1] if block_shape is not None else K
    bk1 = min(cfg["bk1"], sbk, 128)
    x_group = bk1
    if cfg["quant_x"]:
        group = K if cfg["x_per_token"] and block_shape is None else 128
        x_group = group if K % group == 0 else bk1
    if cfg["quant_h"]:
        return {"x_group": x_group, "h_group": cfg["bn1"]}
    return {"x_group": x_group, "h_group": min(cfg["bk2"], sbk), "h_dtype": act_dtype}


def rel_err(out, ref):
    return ((out.to(torch.float64) - ref).norm() / ref.norm()).item()


def make_problem(
    M,
    K,
    N,
    E,
    top_k,
    fp8_dtype=torch.float8_e4m3fn,
    act_dtype=torch.bfloat16,
    scale_mode="tensor",
    block_shape=(128, 128),
    n_shared=0,
    seed=0,
    device="cpu",
):
    """Random problem: returns (x, w13, w2, topk_weights, topk_ids, s13, s2, bs).

    Routing is top-k of softmax of random logits, renormalised; ``n_shared``
    extra columns route to the last experts with weight 1.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(M, K, generator=g, device=device).to(act_dtype)
    fmax = torch.finfo(fp8_dtype).max

    def quant(wf, mode):  # one expert: [R, C] float32 -> fp8, scales
        R, C = wf.shape
        if mode == "tensor":
            s = wf.abs().amax() / fmax
            return (wf / s).to(fp8_dtype), s.reshape(1)
        if mode == "channel":
            s = wf.abs().amax(dim=1) / fmax
            return (wf / s[:, None]).to(fp8_dtype), s
        bn, bk = block_shape
        nb, kb = -(-R // bn), -(-C // bk)
        pad = torch.nn.functional.pad(wf, (0, kb * bk - C, 0, nb * bn - R))
        blocks = pad.reshape(nb, bn, kb, bk)
        s = blocks.abs().amax(dim=(1, 3)) / fmax
        q = (blocks / s[:, None, :, None]).reshape(nb * bn, kb * bk)[:R, :C]
        return q.to(fp8_dtype), s

    # Generated one expert at a time on the target device (real sizes are large).
    w13s, s13s, w2s, s2s = [], [], [], []
    for _ in range(E):
        q, s = quant(
            torch.randn(2 * N, K, generator=g, device=device) / K**0.5, scale_mode
        )
        w13s.append(q)
        s13s.append(s)
        q, s = quant(torch.randn(K, N, generator=g, device=device) / N**0.5, scale_mode)
        w2s.append(q)
        s2s.append(s)
    w13, w2 = torch.stack(w13s), torch.stack(w2s)
    s13, s2 = torch.stack(s13s), torch.stack(s2s)
    if scale_mode == "tensor":
        s13, s2 = s13.reshape(E), s2.reshape(E)
    n_routed = E - n_shared
    logits = torch.randn(M, n_routed, generator=g, device=device)
    tw, ti = torch.topk(logits.softmax(-1), top_k, dim=-1)
    tw = tw / tw.sum(-1, keepdim=True)
    if n_shared:
        sh_ids = torch.arange(n_routed, E, device=device).expand(M, n_shared)
        ti = torch.cat([ti, sh_ids], dim=1)
        tw = torch.cat([tw, torch.ones(M, n_shared, device=device)], dim=1)
    bs = block_shape if scale_mode == "block" else None
    out = (x, w13, w2, tw.float(), ti.to(torch.int32), s13.float(), s2.float(), bs)
    return out
