"""Plain torch attention, written from the definition, for the contract tests.

Nothing here calls the stand-ins or the kernels under test.
"""

from __future__ import annotations

import torch


def attention(q, k, v, scale, causal=False, window_left=-1):
    """softmax(q k^T * scale) v in float64 for one sequence: q ``[Lq, Hq, D]``, k/v
    ``[Lk, Hk, D(v)]``, query head h on kv head ``h // (Hq // Hk)``. ``causal``: query i
    sits at key position ``i + Lk - Lq`` and sees keys up to there (and, with
    ``window_left >= 0``, from ``window_left`` before it)."""
    hq, hk = q.shape[1], k.shape[1]
    kk = k.double().repeat_interleave(hq // hk, dim=1)
    vv = v.double().repeat_interleave(hq // hk, dim=1)
    logits = torch.einsum("ihd,jhd->hij", q.double(), kk) * scale
    if causal:
        lq, lk = q.shape[0], k.shape[0]
        pos = torch.arange(lq, device=q.device)[:, None] + (lk - lq)
        key = torch.arange(lk, device=q.device)[None, :]
        keep = key <= pos
        if window_left >= 0:
            keep &= key >= pos - window_left
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.einsum("hij,jhd->ihd", torch.softmax(logits, dim=-1), vv)


def exact_fp8(shape, dtype, per_row_amax, generator):
    """bf16 data whose FP8 quantisation is exact: FP8-representable values times a
    power of two per row (the last dim), so that quantising with that power of two
    (per tensor: ``per_row_amax=False``, scale 2**-3) or with ``amax / fp8 max`` (per
    row: each row holds one ``±fp8 max``) rounds nothing. Returns (data, scales)."""
    fmax = torch.finfo(dtype).max
    r = (torch.randn(shape, generator=generator) * 16).clamp(-fmax, fmax)
    r = r.to(dtype).float()
    if not per_row_amax:
        return (r * 2.0**-3).to(torch.bfloat16), torch.tensor([2.0**-3])
    r[..., 0] = fmax * torch.sign(torch.randn(shape[:-1], generator=generator))
    exps = torch.randint(-6, 1, shape[:-1], generator=generator).float()
    scale = 2.0**exps
    return (r * scale[..., None]).to(torch.bfloat16), scale


def rope(x, positions, base=10000.0, neox=True):
    """Rotary embedding of ``x`` ``[t, heads, d]`` at ``positions`` ``[t]``, in
    float64: frequency ``i`` is ``base ** (-2i / d)``; NeoX rotates ``(x[i], x[i +
    d/2])``, GPT-J ``(x[2i], x[2i + 1])``."""
    d = x.shape[-1]
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    angle = positions.double()[:, None] * freq[None, :]
    c, s = angle.cos()[:, None, :], angle.sin()[:, None, :]
    xd = x.double()
    if neox:
        a, b = xd[..., : d // 2], xd[..., d // 2 :]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)
    a, b = xd[..., 0::2], xd[..., 1::2]
    out = torch.empty_like(xd)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
    return out


def rms_norm(x, weight, eps):
    """``x / rms(x) * weight`` over the last dimension, in float64."""
    xd = x.double()
    return xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
