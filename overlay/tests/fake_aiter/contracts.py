# SPDX-License-Identifier: MIT
"""Torch stand-ins for AITER's ASM, CK and HIP entry points that the patched ATOM calls.

Each function computes the real result of the documented contract of one AITER entry
point: the memory layout it reads and writes, its dtypes and scales. They are written
from the contracts, not from AITER's code, and are slow (Python loops over sequences):
they exist to tell a right answer from a wrong one at test sizes.

The contracts were read at AITER ``a2081d445a770fdabf3015a077f7b933571f02ab``
(2026-02-24 02:24 UTC, "Add compiler configurations for bpreshuffle_cktile modules
(#2069)"), the last AITER ``main`` commit not newer than the ATOM pin 87460d31
(2026-02-24 03:07 UTC). Every file cited below is identical at ``ca4c6619`` (the last
``main`` commit of 2026-02-24). Citations are ``path:line`` at that commit.

Layout names used throughout (``x`` = elements per 16 bytes of the cache dtype, 8 for
bf16 and 16 for fp8, read from ``key_cache.size(4)``; ATOM allocates it as
``16 // element_size``, ``atom/model_engine/model_runner.py:1058``):

* K cache: ``[num_blocks, kv_heads, head_size // x, block_size, x]``;
* V cache, ASM layout: memory ``[num_blocks, kv_heads, block_size // x, head_size, x]``
  (ATOM hands it over viewed as ``[num_blocks, kv_heads, head_size, block_size]``);
* V cache, non-ASM layout: ``[num_blocks, kv_heads, head_size, block_size]``;
* per-token FP8 scales, ASM layout: ``[num_blocks, kv_heads, block_size]`` float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# -- KV cache layouts ----------------------------------------------------------------


def _slots(slot_mapping: torch.Tensor):
    """(token index, block, offset) of every token whose slot is not negative (a
    negative slot is a padding token the kernels skip: ``cache_kernels.cu:194-198``)."""
    slots = slot_mapping.flatten().long()
    tokens = torch.nonzero(slots >= 0).flatten()
    return tokens, slots[tokens], slots


def k_cache_view(key_cache: torch.Tensor) -> torch.Tensor:
    """The K cache as ``[num_blocks, kv_heads, block_size, head_size]`` (a copy)."""
    nb, h, dx, bs, x = key_cache.shape
    return key_cache.permute(0, 1, 3, 2, 4).reshape(nb, h, bs, dx * x).contiguous()


def v_cache_view(
    value_cache: torch.Tensor, x: int, head_size: int, asm_layout: bool
) -> torch.Tensor:
    """The V cache memory as ``[num_blocks, kv_heads, block_size, head_size]`` (a
    copy), read in the ASM layout or the non-ASM layout."""
    nb, h = value_cache.shape[:2]
    flat = value_cache.reshape(nb, h, -1)
    bs = flat.shape[-1] // head_size
    if asm_layout:
        return (
            flat.view(nb, h, bs // x, head_size, x)
            .permute(0, 1, 2, 4, 3)
            .reshape(nb, h, bs, head_size)
            .contiguous()
        )
    return flat.view(nb, h, head_size, bs).transpose(-1, -2).contiguous()


def _store(key_cache, value_cache, k_rows, v_rows, tokens, slot, asm_layout):
    """Write ``k_rows``/``v_rows`` ``[n, kv_heads, head_size]`` (already in the cache
    dtype) at ``slot`` in the documented layouts."""
    nb, h, dx, bs, x = key_cache.shape
    d = dx * x
    blk, off = slot // bs, slot % bs
    key_cache[blk, :, :, off, :] = k_rows.reshape(-1, h, dx, x)
    flat = value_cache.view(nb, h, -1)
    if asm_layout:  # [nb, h, bs // x, d, x]
        flat.view(nb, h, bs // x, d, x)[blk, :, off // x, :, off % x] = v_rows
    else:  # [nb, h, d, bs]
        flat.view(nb, h, d, bs)[blk, :, :, off] = v_rows


def reshape_and_cache(
    key,
    value,
    key_cache,
    value_cache,
    slot_mapping,
    kv_cache_dtype,
    k_scale=None,
    v_scale=None,
    asm_layout=False,
):
    """``aiter.reshape_and_cache`` (``aiter/ops/cache.py:22-33``, HIP kernel
    ``csrc/kernels/cache_kernels.cu:170-249``, host ``:2689-2722``).

    ``key``/``value`` ``[num_tokens, kv_heads, head_size]``; ``block_size`` is
    ``key_cache.size(3)`` and ``x`` ``key_cache.size(4)`` (``:2703-2704``). K goes to
    ``[blk, head, d // x, off, d % x]`` (``:216-218``); V to ``[blk, head, off // x, d,
    off % x]`` with ``asm_layout`` (``:219-225``, the same ``x`` as K) and to ``[blk,
    head, d, off]`` without (``:226-231``). ``kv_cache_dtype == "auto"`` copies; any
    other value stores ``value * (1 / scale)`` converted to the cache dtype, with the
    first element of ``k_scale``/``v_scale`` as a per-tensor scale (``:204-205,
    236-247``). Returns None (in place)."""
    tokens, slot, _ = _slots(slot_mapping)
    k, v = key[tokens], value[tokens]
    if kv_cache_dtype != "auto":
        k = k.float() * (1.0 / k_scale.flatten()[0].float())
        v = v.float() * (1.0 / v_scale.flatten()[0].float())
    _store(
        key_cache,
        value_cache,
        k.to(key_cache.dtype),
        v.to(value_cache.dtype),
        tokens,
        slot,
        asm_layout,
    )


def reshape_and_cache_with_pertoken_quant(
    key,
    value,
    key_cache,
    value_cache,
    k_dequant_scales,
    v_dequant_scales,
    slot_mapping,
    asm_layout,
):
    """``aiter.reshape_and_cache_with_pertoken_quant`` (``aiter/ops/cache.py:49-59``,
    kernel ``csrc/kernels/cache_kernels.cu:322-473``, host ``:3067-3144``).

    Per (token, kv head): ``scale = amax(|row|) / max(cache dtype)`` over the head's
    ``head_size`` values (``:387-413``), the row stored as ``row * (1 / scale)`` in the
    cache dtype (FP8 or int8, ``:3095-3139``), in the layouts of ``reshape_and_cache``
    (``:451-471``). The float32 dequantisation scale goes to
    ``k_dequant_scales[blk, head, off]`` of a ``[num_blocks, kv_heads, block_size]``
    tensor with ``asm_layout`` (``:424-430``) and, without, to flat index ``head *
    max_kv_tokens + slot`` with ``max_kv_tokens = k_dequant_scales.size(1)``
    (``:431-437, 3082``; the documented shape there is ``[kv_heads, max_kv_tokens]``,
    ``:3072``). ``head_size <= 512`` (``:3083``). A row of zeros gives a zero scale and
    NaN values, as the kernel's ``1 / scale`` does. Returns None (in place)."""
    if key.shape[-1] > 512:
        raise ValueError(f"head_size {key.shape[-1]} > 512 is not supported")
    tokens, slot, _ = _slots(slot_mapping)
    qmax = _dtype_max(key_cache.dtype)

    def quant(rows):
        rows = rows.float()
        scale = rows.abs().amax(dim=-1) / qmax  # [n, kv_heads]
        return (rows * (1.0 / scale)[..., None]).to(key_cache.dtype), scale

    kq, ks = quant(key[tokens])
    vq, vs = quant(value[tokens])
    _store(key_cache, value_cache, kq, vq, tokens, slot, asm_layout)
    for scales, s in ((k_dequant_scales, ks), (v_dequant_scales, vs)):
        if asm_layout:
            bs = scales.shape[-1]
            scales[slot // bs, :, slot % bs] = s
        else:
            heads = torch.arange(s.shape[1], device=s.device)
            index = heads[None, :] * scales.shape[1] + slot[:, None]
            scales.view(-1)[index.flatten()] = s.flatten()


def _rotate(x, cos, sin, neox):
    """RoPE of ``x`` ``[t, heads, d]`` with per-token ``cos``/``sin`` ``[t, d / 2]``:
    NeoX rotates the halves ``(x[i], x[i + d/2])``, GPT-J the pairs ``(x[2i],
    x[2i + 1])``, both by frequency ``i``."""
    xf = x.float()
    c, s = cos.float()[:, None, :], sin.float()[:, None, :]
    if neox:
        a, b = xf.chunk(2, dim=-1)
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)
    a, b = xf[..., 0::2], xf[..., 1::2]
    return torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2)


def rope_cached_thd_positions_2c_fwd_inplace(
    x,
    y,
    cos,
    sin,
    positions,
    rotate_style,
    reuse_freqs_front_part,
    nope_first,
    transpose_output=False,
):
    """``aiter.ops.triton.rope.rope.rope_cached_thd_positions_2c_fwd_inplace``
    (``aiter/ops/triton/rope/rope.py:1057-1087``, checks ``:857-876``): RoPE of ``x``
    ``[t, heads, d]`` and ``y`` ``[t, kv_heads, d]`` in place, at ``positions``
    ``[t]`` of ``cos``/``sin`` ``[max_pos, d / 2]`` (``reuse_freqs_front_part``: the
    table holds the first half of the frequencies); ``rotate_style`` 0 is NeoX, 1
    GPT-J (``RotateStyle``, ``:42-44``). Only the full-rotation case ATOM uses."""
    if not reuse_freqs_front_part or nope_first or cos.shape[-1] * 2 != x.shape[-1]:
        raise NotImplementedError("rope stand-in: full rotation with a half table")
    pos = positions.flatten().long()
    c, s = cos.reshape(cos.shape[0], -1)[pos], sin.reshape(sin.shape[0], -1)[pos]
    for t in (x, y):
        t.copy_(_rotate(t, c, s, rotate_style == 0).to(t.dtype))
    return x, y


def rope_cached_positions_2c_fwd_inplace(
    input_x, input_y, cos, sin, positions, rotate_style, reuse_freqs_front_part,
    nope_first,
):  # fmt: skip
    """``aiter.rope_cached_positions_2c_fwd_inplace`` (HIP, ``aiter/ops/rope.py:833-858``,
    what ATOM's ``RotaryEmbedding.forward`` calls): the same rotation as the Triton
    one above on ``sbhd`` tensors ``[s, b, heads, d]`` with ``positions`` ``[s, b]``
    and ``cos``/``sin`` ``[max_pos, 1, 1, d / 2]``, in place."""
    x = input_x.reshape(-1, *input_x.shape[-2:])
    y = input_y.reshape(-1, *input_y.shape[-2:])
    rope_cached_thd_positions_2c_fwd_inplace(
        x, y, cos, sin, positions, rotate_style, reuse_freqs_front_part, nope_first
    )
    input_x.copy_(x.view_as(input_x))
    input_y.copy_(y.view_as(input_y))


def _dtype_max(dtype: torch.dtype) -> float:
    if dtype.is_floating_point:
        return float(torch.finfo(dtype).max)
    return float(torch.iinfo(dtype).max)


# -- attention -------------------------------------------------------------------------


def _attend(q, k, v, scale, mask=None):
    """softmax(q k^T * scale) v in float32: q ``[Lq, Hq, D]``, k/v ``[Lk, Hk, D]``
    (GQA: query head ``h`` reads kv head ``h // (Hq // Hk)``), mask ``[Lq, Lk]`` True
    = keep. A query row with nothing kept gives zeros."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", p, v)


def pa_fwd_asm(
    Q,
    K,
    V,
    block_tables,
    context_lens,
    block_tables_stride0,
    max_qlen=1,
    K_QScale=None,
    V_QScale=None,
    out_=None,
    qo_indptr=None,
    high_precision=1,
    kernelName=None,
):
    """``aiter.pa_fwd_asm`` (``aiter/ops/attention.py:105-122``, ASM host
    ``csrc/py_itfs_cu/asm_pa.cu:160-312``): paged attention decode, one query token
    per sequence.

    ``Q`` ``[num_seqs, num_heads, head_size]`` bf16/fp16 (``:160, 232-237``); ``K``
    ``[num_blocks, kv_heads, head_size // x, block_size, x]`` (``:161``); ``V`` memory
    ``[num_blocks, kv_heads, block_size // X, head_size, X]`` (``:162``), read through
    K's block and head strides (``:185-186, 214-215``) so V must be contiguous like K;
    ``X`` is K's ``x``, ``16 // element_size`` (AITER's own test shuffles V so,
    ``op_tests/test_pa.py:576-583``, and the writer, ``cache_kernels.cu:219-225``,
    uses one ``x`` for both). ``block_size = K.size(3)``, GQA = ``num_heads //
    kv_heads`` (``:181-182``).
    ``block_tables`` rows are ``block_tables_stride0`` int32 apart (``args.mblk``,
    ``:211``). The softmax scale is fixed at ``1 / sqrt(head_size)`` (``:187-190``,
    there is no scale argument). FP8/int8 caches are dequantised with
    ``K_QScale``/``V_QScale``, which the kernel receives as bare pointers
    (``:200-203``):
    the per-token ``[num_blocks, kv_heads, block_size]`` float32 tensors the ASM-layout
    cache writer fills (``cache_kernels.cu:424-430``; ATOM's ``kv_scale``,
    ``model_runner.py:1037-1045``). AITER's test gives a per-tensor scale to the ASM
    kernel only spread over such a tensor (``op_tests/test_pa.py:761-767``), so a
    per-tensor scale is refused here; ``[..., block_size, 1]`` (its per-token case,
    ``:207``) is the same memory and accepted.
    ``high_precision`` only picks a kernel's rounding; the stand-in computes in float32.
    Output: ``out_`` or a new tensor like ``Q`` (``:174``). ``max_qlen > 1`` (MTP) is
    not modelled and raises."""
    if max_qlen != 1 or qo_indptr is not None:
        raise NotImplementedError("pa_fwd_asm stand-in: only max_qlen == 1")
    num_blocks, kv_heads, dx, block_size, x = K.shape
    head_size = dx * x
    if Q.shape[0] != context_lens.shape[0]:
        raise ValueError(
            f"pa_fwd_asm: one query token per sequence (max_qlen=1), got "
            f"{Q.shape[0]} query rows for {context_lens.shape[0]} sequences"
        )
    if Q.shape[-1] != head_size:
        raise ValueError(f"Q head_size {Q.shape[-1]} != K's {head_size}")
    kf = k_cache_view(K).float()
    vf = v_cache_view(V, x, head_size, asm_layout=True).float()
    if K.dtype in (torch.bfloat16, torch.float16):
        if K_QScale is not None:
            raise ValueError("pa_fwd_asm: scales given for a bf16/fp16 cache")
    else:
        want = (num_blocks, kv_heads, block_size)
        for sc in (K_QScale, V_QScale):
            shape = None if sc is None else tuple(sc.shape)
            if shape not in (want, (*want, 1)) or sc.dtype != torch.float32:
                got = None if sc is None else (shape, sc.dtype)
                raise ValueError(
                    f"pa_fwd_asm: FP8/int8 cache needs per-token float32 scales "
                    f"{want}, got {got}"
                )
        kf = kf * K_QScale.reshape(*want, 1)
        vf = vf * V_QScale.reshape(*want, 1)
    out = out_ if out_ is not None else torch.empty_like(Q)
    table = block_tables.flatten()
    scale = 1.0 / math.sqrt(head_size)
    for b in range(Q.shape[0]):
        n = int(context_lens[b])
        nblk = (n + block_size - 1) // block_size
        ids = table[b * block_tables_stride0 : b * block_tables_stride0 + nblk].long()
        k = kf[ids].permute(0, 2, 1, 3).reshape(-1, kv_heads, head_size)[:n]
        v = vf[ids].permute(0, 2, 1, 3).reshape(-1, kv_heads, head_size)[:n]
        out[b] = _attend(Q[b : b + 1], k, v, scale)[0].to(out.dtype)
    return out


def pa_decode_gluon(
    output,
    query,
    key_cache,
    value_cache,
    context_lengths,
    block_tables,
    softmax_scale,
    query_length,
    max_context_partition_num,
    context_partition_size,
    compute_type,
    query_scale,
    key_scale,
    value_scale,
    exp_sums=None,
    max_logits=None,
    temporary_output=None,
    alibi_slopes=None,
    sinks=None,
    sliding_window=0,
    ps=False,
):
    """``torch.ops.aiter.pa_decode_gluon`` (AITER's Gluon paged decode,
    ``aiter/ops/triton/gluon/pa_decode_gluon.py:3230-3361``; registered as a torch op
    through ``aiter/ops/attention.py:14-24``): AMD-only, so a stand-in here.

    ``query``/``output`` ``[num_seqs * query_length, num_heads, head_size]``
    (``:3231-3232``); ``key_cache`` ``[num_blocks, kv_heads, head_size // x,
    block_size, x]`` (``:3233``); ``value_cache`` ``[num_blocks, kv_heads, head_size,
    block_size]`` or, 5-D, the transposed ``[num_blocks, kv_heads, block_size // x,
    head_size, x]`` (``:3234, 3279-3284``). Scales (``:3312-3325``): per tensor
    (one element) or per token ``[num_blocks, kv_heads, block_size, 1]``; FP8 keys
    need them. ``query_length > 1`` is causal within the query block (``:3415``).
    ``sliding_window > 0`` keeps the last ``sliding_window`` keys of the context
    (``:1284-1285``). ``sinks`` (one logit per query head) join the softmax's
    denominator only. The partition buffers only hold intermediates; ``compute_type``
    picks the kernel's MMA type and the stand-in computes in float32."""
    if alibi_slopes is not None:
        raise NotImplementedError("pa_decode_gluon stand-in: no ALiBi")
    num_blocks, kv_heads, dx, block_size, x = key_cache.shape
    head_size = dx * x
    transposed = value_cache.dim() == 5
    kf = k_cache_view(key_cache).float()
    vf = v_cache_view(value_cache, x, head_size, asm_layout=transposed).float()
    fp8 = key_cache.element_size() == 1
    if fp8 and (key_scale is None or value_scale is None):
        raise ValueError("pa_decode_gluon: an FP8 cache needs key_scale/value_scale")
    for sc, cache in ((key_scale, "kf"), (value_scale, "vf")):
        if sc is None:
            continue
        if sc.numel() == 1:
            factor = sc.float().reshape(())
        elif tuple(sc.shape) == (num_blocks, kv_heads, block_size, 1):
            factor = sc.float()
        else:
            raise ValueError(f"pa_decode_gluon: scale shape {tuple(sc.shape)}")
        if cache == "kf":
            kf = kf * factor
        else:
            vf = vf * factor
    q = query.float()
    if query_scale is not None:
        q = q * query_scale.float()
    heads = query.shape[1]
    for b in range(query.shape[0] // query_length):
        n = int(context_lengths[b])
        nblk = (n + block_size - 1) // block_size
        ids = block_tables[b, :nblk].long()
        k = kf[ids].permute(0, 2, 1, 3).reshape(-1, kv_heads, head_size)[:n]
        v = vf[ids].permute(0, 2, 1, 3).reshape(-1, kv_heads, head_size)[:n]
        rows = slice(b * query_length, (b + 1) * query_length)
        keep = _causal_mask(query_length, n, device=q.device)
        if sliding_window > 0:
            keep &= torch.arange(n, device=q.device)[None, :] >= n - sliding_window
        group = heads // kv_heads
        kk = k.repeat_interleave(group, dim=1)
        vv = v.repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", q[rows], kk) * softmax_scale
        s = s.masked_fill(~keep, float("-inf"))
        if sinks is not None:
            sink = sinks.float().view(heads, 1, 1).expand(heads, query_length, 1)
            s = torch.cat([s, sink], dim=-1)
        p = torch.softmax(s, dim=-1)[..., :n]
        output[rows] = torch.einsum("hqk,khd->qhd", p, vv).to(output.dtype)


def pa_persistent_fwd(
    Q,
    K,
    V,
    output,
    max_qlen,
    qo_indptr,
    kv_indptr,
    kv_indices,
    context_lens,
    work_indptr=None,
    work_info=None,
    reduce_indptr=None,
    reduce_final_map=None,
    reduce_partial_map=None,
    K_QScale=None,
    V_QScale=None,
    softmax_scale=None,
    mask=0,
):
    """``aiter.pa_persistent_fwd`` (``aiter/ops/attention.py:313-380``: the persistent
    ASM kernel ``pa_ps_fwd_asm`` and its reduction), what ATOM runs for 1024-token
    blocks: the caches in the ASM layout of ``pa_fwd_asm`` (``:315-316``); sequence
    ``b``'s queries are rows ``qo_indptr[b]:qo_indptr[b+1]`` of ``Q``, its pages
    ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]`` (``:319-321``) holding
    ``context_lens[b]`` tokens; per-token FP8 scales ``[num_blocks, kv_heads,
    block_size]`` (``:329-330``); ``softmax_scale`` defaults to ``1 / sqrt(head)``
    (``:336-337``); ``mask=1`` is causal within a sequence's queries. The work and
    reduce maps only divide the work. Writes ``output``; returns ``(output, None)``
    (no LSE)."""
    num_blocks, kv_heads, dx, block_size, x = K.shape
    head_size = dx * x
    kf = k_cache_view(K).float()
    vf = v_cache_view(V, x, head_size, asm_layout=True).float()
    if K.element_size() == 1:
        want = (num_blocks, kv_heads, block_size)
        for sc in (K_QScale, V_QScale):
            if sc is None or sc.numel() != kf.numel() // head_size:
                raise ValueError(
                    f"pa_persistent_fwd: FP8 needs per-token scales {want}"
                )
        kf = kf * K_QScale.reshape(*want, 1)
        vf = vf * V_QScale.reshape(*want, 1)
    scale = softmax_scale if softmax_scale is not None else head_size**-0.5
    for b in range(context_lens.shape[0]):
        q0, q1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        pages = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])].long()
        n = int(context_lens[b])
        k = kf[pages].permute(0, 2, 1, 3).reshape(-1, kv_heads, head_size)[:n]
        v = vf[pages].permute(0, 2, 1, 3).reshape(-1, kv_heads, head_size)[:n]
        keep = _causal_mask(q1 - q0, n, device=Q.device) if mask == 1 else None
        output[q0:q1] = _attend(Q[q0:q1], k, v, scale, keep).to(output.dtype)
    return output, None


def _causal_mask(lq, lk, window_left=-1, window_right=-1, device=None):
    """Bottom-right aligned mask (query i sits at key position i + lk - lq), with the
    optional sliding window [pos - left, pos + right]."""
    qpos = torch.arange(lq, device=device)[:, None] + (lk - lq)
    kpos = torch.arange(lk, device=device)[None, :]
    keep = kpos <= qpos + max(window_right, 0)
    if window_left >= 0:
        keep &= kpos >= qpos - window_left
    return keep


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    min_seqlen_q=0,
    dropout_p=0.0,
    softmax_scale=None,
    logits_soft_cap=0.0,
    causal=False,
    window_size=(-1, -1, 0),
    bias=None,
    alibi_slopes=None,
    deterministic=False,
    return_lse=False,
    return_attn_probs=False,
    how_v3_bf16_cvt=1,
    block_table=None,
    out=None,
    cu_seqlens_q_padded=None,
    cu_seqlens_k_padded=None,
    sink_ptr=None,
):
    """``aiter.flash_attn_varlen_func`` (CK, ``aiter/ops/mha.py:2488-2576``): varlen
    attention, the contract of its docstring.

    ``q`` ``[total_q, nheads, d]``, ``k``/``v`` ``[total_k, nheads_k, d(_v)]``, MQA/GQA
    with query head ``h`` on kv head ``h // (nheads // nheads_k)`` (``:2522-2526``);
    ``cu_seqlens_*`` int32 ``[batch + 1]`` (``:2547-2550``); ``softmax_scale`` default
    ``1 / sqrt(d)`` (``:2555-2556``); ``causal`` aligned bottom-right, an all-masked
    row gives zeros (``:2527-2537``); ``window_size`` ``(left, right)``: query ``i``
    sees keys ``[i + Lk - Lq - left, i + Lk - Lq + right]``, -1 = unbounded
    (``:2539-2541``). Returns ``out`` ``[total_q, nheads, d_v]`` in q's dtype
    (``:2568-2569``). Dropout, soft-cap, bias, ALiBi, LSE/probabilities, paged K/V
    and sinks are not modelled and raise."""
    unsupported = {
        "dropout_p": dropout_p != 0.0,
        "logits_soft_cap": logits_soft_cap != 0.0,
        "bias": bias is not None,
        "alibi_slopes": alibi_slopes is not None,
        "return_lse": return_lse or return_attn_probs,
        "block_table": block_table is not None,
        "padded cu_seqlens": cu_seqlens_q_padded is not None
        or cu_seqlens_k_padded is not None,
        "sink_ptr": sink_ptr is not None,
    }
    if any(unsupported.values()):
        names = [k for k, on in unsupported.items() if on]
        raise NotImplementedError(f"flash_attn_varlen_func stand-in: {names}")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    left, right = window_size[0], window_size[1]
    if causal:
        right = 0
    res = out if out is not None else q.new_empty(*q.shape[:-1], v.shape[-1])
    for b in range(cu_seqlens_q.numel() - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        lq, lk = q1 - q0, k1 - k0
        mask = None
        if causal or left >= 0 or right >= 0:
            mask = _causal_mask(lq, lk, left, right if right >= 0 else lk, q.device)
        res[q0:q1] = _attend(q[q0:q1], k[k0:k1], v[k0:k1], scale, mask).to(res.dtype)
    return res


# -- MLA -------------------------------------------------------------------------------


def _mla(
    q,
    kv_buffer,
    o,
    qo_indptr,
    kv_indptr,
    kv_indices,
    kv_last_page_lens,
    scale,
    q_scale=None,
    kv_scale=None,
):
    """Absorbed MLA over a paged latent cache: keys are the whole latent+rope row,
    values its first ``o.shape[-1]`` (kv_lora_rank) elements; queries of one sequence
    are causal, bottom-right aligned (``op_tests/test_mla.py:42-58``)."""
    num_page, page_size, nhead_kv, _ = kv_buffer.shape
    if nhead_kv != 1:
        raise NotImplementedError("MLA stand-in: one latent kv head")
    rows = kv_buffer.reshape(num_page, page_size, -1).float()
    if kv_scale is not None:
        rows = rows * kv_scale.flatten()[0].float()
    qf = q.float() if q_scale is None else q.float() * q_scale.flatten()[0].float()
    dv = o.shape[-1]
    for b in range(qo_indptr.numel() - 1):
        q0, q1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        pages = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])].long()
        if pages.numel() == 0:
            o[q0:q1] = 0
            continue
        n = (pages.numel() - 1) * page_size + int(kv_last_page_lens[b])
        kv = rows[pages].reshape(-1, rows.shape[-1])[:n, None, :]
        mask = _causal_mask(q1 - q0, n, device=q.device)
        o[q0:q1] = _attend(qf[q0:q1], kv, kv[..., :dv], scale, mask).to(o.dtype)


def mla_decode_fwd(
    q,
    kv_buffer,
    o,
    qo_indptr,
    kv_indptr,
    kv_indices,
    kv_last_page_lens,
    max_seqlen_q,
    page_size=1,
    nhead_kv=1,
    sm_scale=None,
    logit_cap=0.0,
    num_kv_splits=None,
    num_kv_splits_indptr=None,
    work_meta_data=None,
    work_indptr=None,
    work_info_set=None,
    reduce_indptr=None,
    reduce_final_map=None,
    reduce_partial_map=None,
    q_scale=None,
    kv_scale=None,
    intra_batch_mode=False,
    return_logits=False,
    return_lse=False,
):
    """``aiter.mla.mla_decode_fwd`` (``aiter/mla.py:144-368``, ASM stage 1
    ``aiter/ops/attention.py:550-581``).

    ``q`` ``[total_q, nhead, kv_lora_rank + rope]`` (bf16, or FP8 with ``q_scale``);
    ``kv_buffer`` ``[num_page, page_size, nhead_kv, kv_lora_rank + rope]`` (bf16, or
    FP8 with a per-tensor ``kv_scale`` ``[1]``, ``attention.py:578-580``); ``o``
    ``[total_q, nhead, v_head_dim]`` is written in place with
    ``V = kv[..., :v_head_dim]``
    (``mla.py:181``); sequence ``b`` has queries ``qo_indptr[b]:qo_indptr[b+1]`` and
    pages ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]``, the last one holding
    ``kv_last_page_lens[b]`` tokens; ``sm_scale`` default ``1 / sqrt(qk_head_dim)``
    (``mla.py:178-179``); ``logit_cap`` must be 0 (``:172``). Split/persistent
    metadata only change how the work is divided, not the result. ``page_size`` and
    ``nhead_kv`` go to the ASM kernel typed ``int`` (``attention.py:568-570``), so a
    float there is refused, and they must describe ``kv_buffer``. Returns ``(o,
    lse)``-like: the stand-in returns ``(o, None)`` (no LSE)."""
    for name, value, dim in (("page_size", page_size, 1), ("nhead_kv", nhead_kv, 2)):
        if not isinstance(value, int) or value != kv_buffer.shape[dim]:
            raise TypeError(
                f"mla_decode_fwd: {name}={value!r} (an int, kv_buffer.shape[{dim}] = "
                f"{kv_buffer.shape[dim]})"
            )
    if logit_cap > 0:
        raise ValueError(f"logit_cap={logit_cap} is not supported")
    if return_logits or return_lse:
        raise NotImplementedError("mla_decode_fwd stand-in: no logits/LSE")
    scale = sm_scale if sm_scale is not None else kv_buffer.shape[-1] ** -0.5
    _mla(
        q,
        kv_buffer,
        o,
        qo_indptr,
        kv_indptr,
        kv_indices,
        kv_last_page_lens,
        scale,
        q_scale,
        kv_scale,
    )
    return o, None


def mla_prefill_fwd(
    q,
    kv_buffer,
    o,
    qo_indptr,
    kv_indptr,
    kv_indices,
    kv_last_page_lens,
    max_seqlen_q,
    sm_scale=None,
    logit_cap=0.0,
    num_kv_splits=None,
):
    """``aiter.mla.mla_prefill_fwd`` (``aiter/mla.py:370-411``, ASM
    ``mla_prefill_asm_fwd``): the same absorbed-MLA contract as ``mla_decode_fwd``
    for bf16 (``q`` ``[num_seqs, num_heads, head_size]``, ``kv_buffer`` ``[num_page,
    page_size, num_kv_heads, kv_lora_rank + qk_rope_head_dim]``, ``o`` ``[num_seqs,
    num_heads, v_head_dim]``, ``:371-373``), queries of a sequence causal. AITER's
    default ``sm_scale`` reads ``qk_head_dim`` before assigning it (``:385-386``):
    ``sm_scale=None`` raises there, and raises here too. Returns ``(o, None)``."""
    if sm_scale is None:
        raise UnboundLocalError("mla_prefill_fwd: sm_scale=None fails in AITER too")
    if logit_cap > 0:
        raise ValueError(f"logit_cap={logit_cap} is not supported")
    _mla(q, kv_buffer, o, qo_indptr, kv_indptr, kv_indices, kv_last_page_lens, sm_scale)
    return o, None


# -- MoE -------------------------------------------------------------------------------


def moe_sorting_fwd(
    topk_ids,
    topk_weights,
    sorted_token_ids,
    sorted_weights,
    sorted_expert_ids,
    num_valid_ids,
    moe_buf,
    num_experts,
    unit_size,
    local_expert_mask=None,
    num_local_tokens=None,
    dispatch_policy=0,
):
    """``aiter.moe_sorting_fwd`` (``aiter/ops/moe_sorting.py:11-25``, CK host
    ``csrc/py_itfs_ck/moe_sorting_kernels.cu:10-70``; buffers sized by
    ``aiter/fused_moe.py:26-73``; encoding as in FlyDSL's
    ``tests/kernels/test_moe_sorting.py`` reference).

    For ``M`` tokens and ``T = topk_ids.shape[1]``: ``sorted_token_ids[M*T + E*unit -
    T]`` int32 holds ``(slot << 24) | token`` grouped by expert in ascending expert
    order, each expert's rows padded to a multiple of ``unit_size`` with ``(T << 24) |
    M``; experts without tokens get no rows; ``sorted_weights`` the matching
    ``topk_weights[token, slot]`` (fp32, ``:23``), 0 in padding;
    ``sorted_expert_ids[ceil(len / unit)]`` the expert of each ``unit_size`` block, -1
    after the last; ``num_valid_ids`` ``[padded rows, M]``. With ``local_expert_mask``
    (EP), masked-off experts get no rows and expert ids are renumbered among the local
    ones. ``moe_buf`` is zeroed (CK clears it: the API gets its row and element size,
    ``:60, 66-67``). Inside an expert the stand-in orders (token, slot) ascending;
    CK does not promise an order there. ``num_local_tokens`` is not modelled."""
    if num_local_tokens is not None:
        raise NotImplementedError("moe_sorting_fwd stand-in: num_local_tokens")
    M, T = topk_ids.shape
    sentinel = (T << 24) | M
    sorted_token_ids.fill_(sentinel)
    sorted_weights.zero_()
    sorted_expert_ids.fill_(-1)
    moe_buf.zero_()
    ids = topk_ids.long()
    row = blk = local = 0
    for e in range(num_experts):
        if local_expert_mask is not None and not bool(local_expert_mask[e]):
            continue
        token, slot = torch.nonzero(ids == e, as_tuple=True)
        n = token.numel()
        if n:
            sorted_token_ids[row : row + n] = ((slot << 24) | token).to(torch.int32)
            sorted_weights[row : row + n] = topk_weights[token, slot].float()
            nblk = (n + unit_size - 1) // unit_size
            sorted_expert_ids[blk : blk + nblk] = local
            row += nblk * unit_size
            blk += nblk
        local += 1
    num_valid_ids[0] = row
    if num_valid_ids.numel() > 1:
        num_valid_ids[1] = M


def unshuffle_weight(w: torch.Tensor, layout=(16, 16)) -> torch.Tensor:
    """Inverse of AITER's ``shuffle_weight`` (``aiter/ops/shuffle.py:7-27``): the
    shuffled ``[..., N, K]`` tensor holds, per (N/16, K/32) tile, the 16x32 tile
    reordered as ``[K/32 tile][32/k][16 rows][k]`` with ``k`` = 16 bytes of elements."""
    bn, bk = layout[0], layout[1] * 2
    k = 16 // w.element_size()
    n, kk = w.shape[-2], w.shape[-1]
    t = w.reshape(-1, n // bn, kk // bk, bk // k, bn, k)
    return t.permute(0, 1, 4, 2, 3, 5).reshape(w.shape)


def _qdq(x: torch.Tensor, dtype: torch.dtype, mode: str, scale=None) -> torch.Tensor:
    """Quantise to ``dtype`` and back (float32): ``tensor`` (``scale`` or dynamic),
    ``token`` (one scale per row) or ``1x128`` (one per row and 128 columns)."""
    fmax = float(torch.finfo(dtype).max)
    xf = x.float()
    if mode == "tensor":
        s = scale.float().reshape(()) if scale is not None else xf.abs().amax() / fmax
        return (xf / s).clamp(-fmax, fmax).to(dtype).float() * s
    groups = xf.shape[-1] if mode == "token" else 128
    g = xf.reshape(xf.shape[0], -1, groups)
    s = g.abs().amax(-1, keepdim=True).clamp(min=1e-10) / fmax
    return ((g / s).clamp(-fmax, fmax).to(dtype).float() * s).reshape(xf.shape)


def _dequant_w(w, scale, mode):
    wf = w.float()
    if scale is None:
        return wf
    E, R, C = w.shape
    s = scale.float()
    if mode == "1x128":
        s = s.reshape(E, -1, s.shape[-1])
        s = s.repeat_interleave(128, 1)[:, :R].repeat_interleave(128, 2)[:, :, :C]
        return wf * s
    if s.numel() == E:
        return wf * s.reshape(E, 1, 1)
    return wf * s.reshape(E, R, 1)


_QUANT_MODES = {0: None, 1: "tensor", 2: "token", 4: "1x128", 5: "1x128"}


def fused_moe(
    hidden_states,
    w1,
    w2,
    topk_weight,
    topk_ids,
    expert_mask=None,
    activation=1,
    quant_type=0,
    doweight_stage1=False,
    w1_scale=None,
    w2_scale=None,
    a1_scale=None,
    a2_scale=None,
    block_size_M=None,
    num_local_tokens=None,
    moe_sorting_dispatch_policy=0,
    dtype=None,
    hidden_pad=0,
    intermediate_pad=0,
    bias1=None,
    bias2=None,
    splitk=0,
):
    """``aiter.fused_moe.fused_moe`` (``aiter/fused_moe.py:88-146``), the CK 2-stage
    MoE ATOM calls (``atom/model_ops/moe.py:583``, behind
    ``torch.ops.aiter.rocm_aiter_fused_moe``).

    ``w1`` ``[E, 2 * inter, model_dim]`` (gate rows then up rows, "g1u1"), ``w2``
    ``[E, model_dim, inter]`` (``:90-91``), pre-shuffled when they carry
    ``is_shuffled`` (``:215``; ATOM shuffles, ``atom/model_ops/utils.py:108``);
    ``activation`` Silu (1) or Gelu (2) of the gate times up; ``quant_type`` (AITER's
    ``QuantType`` values: 0 No, 1 per_Tensor, 2 per_Token, 4 per_1x128, 5
    per_128x128 = per_1x128, ``:556``) says how the FP8 weights are scaled —
    ``w1_scale``/``w2_scale`` per expert, per output row (``[E, rows, 1]``,
    ``:99-100``) or per 128x128 block — and how the activations are quantised before
    each stage (``a1_scale``/``a2_scale`` static per-tensor, else dynamic:
    ``:395-415``). Routing weights multiply the stage-2 output, or with
    ``doweight_stage1`` the stage-1 GEMM's output before the activation (AITER's
    reference ``torch_moe_stage1``, ``:1364-1366``: the same as scaling the token);
    the top-k contributions are summed. ``expert_mask``
    (EP): ``topk_ids`` are global, ``w1``/``w2`` hold the masked-in experts in order,
    tokens routed elsewhere contribute 0. Output ``[M, model_dim]`` in
    ``dtype`` or the input's dtype."""
    if any(p is not None for p in (bias1, bias2, num_local_tokens)) or (
        hidden_pad or intermediate_pad
    ):
        raise NotImplementedError("fused_moe stand-in: bias/padding/num_local_tokens")
    quant_type, activation = int(quant_type), int(activation)
    mode = _QUANT_MODES[quant_type]
    if getattr(w1, "is_shuffled", False):
        w1 = unshuffle_weight(w1)
    if getattr(w2, "is_shuffled", False):
        w2 = unshuffle_weight(w2)
    w1f, w2f = _dequant_w(w1, w1_scale, mode), _dequant_w(w2, w2_scale, mode)
    inter = w2.shape[-1]
    fp8 = w1.dtype
    local = torch.arange(w1.shape[0], device=w1.device)
    if expert_mask is not None:
        local = torch.cumsum(expert_mask.long(), 0) - 1
    x = hidden_states.float()
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float32, device=x.device)
    act = {1: F.silu, 2: F.gelu}[activation]
    for t in range(x.shape[0]):
        for slot in range(topk_ids.shape[1]):
            e = int(topk_ids[t, slot])
            if expert_mask is not None and not bool(expert_mask[e]):
                continue
            le = int(local[e])
            xt = x[t : t + 1]
            if mode is not None:
                xt = _qdq(xt, fp8, mode, a1_scale if mode == "tensor" else None)
            h = xt @ w1f[le].T
            w = float(topk_weight[t, slot])
            if doweight_stage1:  # on the gate/up GEMM's output, before the activation
                h = h * w
            h = act(h[:, :inter]) * h[:, inter:]
            if mode is not None:
                h = _qdq(h, fp8, mode, a2_scale if mode == "tensor" else None)
            y = h @ w2f[le].T
            out[t] += (y if doweight_stage1 else y * w)[0]
    return out.to(dtype or hidden_states.dtype)


def asm_moe(
    hidden_states,
    w1,
    w2,
    topk_weight,
    topk_ids,
    fc1_scale=None,
    fc2_scale=None,
    fc1_smooth_scale=None,
    fc2_smooth_scale=None,
    a16=False,
    per_tensor_quant_scale=None,
    block_shape=None,
    expert_mask=None,
    activation=1,
    local_expert_hash=None,
):
    """``aiter.fused_moe_bf16_asm.asm_moe`` (``aiter/fused_moe_bf16_asm.py:55-277``),
    the ASM MoE ATOM's ``rocm_asm_moe_impl`` calls (``atom/model_ops/moe.py:519-570``,
    the CK backend of ``CompressedTensorsFp8MoEMethod``), for what that caller can
    reach: FP8 weights, gate and up fused ("g1u1", ``w1`` ``[E, 2 * inter, dim]``,
    ``w2`` ``[E, dim, inter]``, pre-shuffled, ``:56-57``), no block scales, no
    per-tensor activation scale.

    * ``a16=False``: the activations are quantised per token to ``w1``'s type
      (``:211-222``, ``dynamic_per_token_scaled_quant``) and ``fmoe_g1u1`` runs
      (``:247-262``), one of AITER's ``pertokenFp8_g1u1`` kernels
      (``csrc/py_itfs_cu/asm_fmoe.cu:517-629``): its FP8 stage-2 input is taken as
      quantised per token too. Weight scales are per output channel: ``fc1_scale``
      ``[E, 1, 2 * inter]``, ``fc2_scale`` ``[E, 1, dim]`` (``asm_fmoe.cu:527-528``;
      the ASM kernel gets bare pointers, so other shapes are refused). A
      ``fc1_smooth_scale`` switches to smooth quantisation (``:187-209``), which
      takes ``[E, dim]`` per-channel smoothing factors (``:62-64``).
    * ``a16=True`` (``:99-117``): ``fmoe_g1u1_a16`` takes the smoothing scales as
      tensors (``asm_fmoe.cu:409-415``); without them the call cannot be made.

    Routing weights multiply the stage-2 output; ``expert_mask`` as in
    ``fused_moe`` above."""
    E, dim, inter = w2.shape
    if block_shape is not None or per_tensor_quant_scale is not None:
        raise NotImplementedError("asm_moe stand-in: block or per-tensor activation")
    if (
        w1.element_size() != 1
        or not w1.dtype.is_floating_point
        or w1.shape[1] != 2 * inter
    ):
        raise NotImplementedError("asm_moe stand-in: FP8 g1u1 weights only")
    if a16 and (fc1_smooth_scale is None or fc2_smooth_scale is None):
        raise ValueError(
            "asm_moe(a16=True): fmoe_g1u1_a16 takes fc1_smooth_scale/fc2_smooth_scale "
            "tensors (csrc/py_itfs_cu/asm_fmoe.cu:409-415), got None"
        )
    for name, scale, rows in (
        ("fc1_scale", fc1_scale, 2 * inter),
        ("fc2_scale", fc2_scale, dim),
    ):
        if scale is None or scale.numel() != E * rows:
            shape = None if scale is None else tuple(scale.shape)
            raise ValueError(
                f"asm_moe: {name} must hold one scale per expert and output channel "
                f"([{E}, 1, {rows}], csrc/py_itfs_cu/asm_fmoe.cu:527-528), got {shape}"
            )
    if fc1_smooth_scale is not None and fc1_smooth_scale.numel() != E * dim:
        raise ValueError(
            f"asm_moe: fc1_smooth_scale must be [{E}, {dim}] per-channel smoothing "
            f"(aiter/fused_moe_bf16_asm.py:64), got {tuple(fc1_smooth_scale.shape)}"
        )
    if getattr(w1, "is_shuffled", False):
        w1 = unshuffle_weight(w1)
    if getattr(w2, "is_shuffled", False):
        w2 = unshuffle_weight(w2)
    w1f = _dequant_w(w1, fc1_scale.reshape(E, -1), "token")
    w2f = _dequant_w(w2, fc2_scale.reshape(E, -1), "token")
    local = torch.arange(E, device=w1.device)
    if expert_mask is not None:
        local = torch.cumsum(expert_mask.long(), 0) - 1
    x = hidden_states.float()
    out = torch.zeros(x.shape[0], dim, dtype=torch.float32, device=x.device)
    act = {1: F.silu, 2: F.gelu}[int(activation)]
    for t in range(x.shape[0]):
        for slot in range(topk_ids.shape[1]):
            e = int(topk_ids[t, slot])
            if expert_mask is not None and not bool(expert_mask[e]):
                continue
            le = int(local[e])
            xt = x[t : t + 1]
            if fc1_smooth_scale is not None:
                xt = xt * fc1_smooth_scale.float().reshape(E, dim)[le]
            h = _qdq(xt, w1.dtype, "token") @ w1f[le].T
            h = _qdq(act(h[:, :inter]) * h[:, inter:], w1.dtype, "token")
            out[t] += (h @ w2f[le].T)[0] * float(topk_weight[t, slot])
    return out.to(hidden_states.dtype)
