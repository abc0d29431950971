"""MLA without CK: batched SDPA prefill fallback, Triton MLA decode.

New paths run only in the CK-free mode (``envs.ck_free_mode()``) or, for the
Triton decode, on ``ATOM_USE_TRITON_MLA_DECODE=1``.
"""

import libcst.matchers as m

from atom_ckfree.edits import (
    InsertStatements,
    ReplaceStatement,
    WrapInCondition,
    defn,
    if_test,
    matching,
    stmt,
)

AITER_IMPORT = """
from aiter import (
    QuantType,
    concat_and_cache_mla,
    dtypes,
    flash_attn_varlen_func,
    fused_qk_rope_concat_and_cache_mla,
    get_hip_quant,
)
"""

# After the import section, so that it does not split an import block in two.
HELPERS = '''
try:
    from aiter import flash_attn_varlen_func
except ImportError:  # an AITER built without CK
    flash_attn_varlen_func = None


TRITON_MLA_DECODE_MODULES = (
    "aiter.ops.triton.attention.mla_decode_rope",
    "aiter.ops.triton.mla_decode_rope",
)


@functools_cache
def triton_mla_decode_kernel():
    """AITER's ``decode_attention_fwd_grouped_rope``, from wherever this AITER keeps it."""
    for name in TRITON_MLA_DECODE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        kernel = getattr(module, "decode_attention_fwd_grouped_rope", None)
        if kernel is not None:
            return kernel
    raise ImportError(
        "Triton MLA decode needs AITER's decode_attention_fwd_grouped_rope; "
        f"none of {', '.join(TRITON_MLA_DECODE_MODULES)} provides it. "
        "Install an AITER with its Triton kernels, or unset ATOM_USE_TRITON_MLA_DECODE."
    )


def use_triton_mla_decode() -> bool:
    return envs.ATOM_USE_TRITON_MLA_DECODE or envs.ck_free_mode()


def varlen_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """Causal attention over a ragged batch, all sequences in one SDPA call.

    ``q`` is ``[total_q, H, D]``, ``k`` ``[total_k, H, D]``, ``v`` ``[total_k, H, Dv]``;
    query i of a sequence sees its keys up to ``i + len_k - len_q`` (bottom-right
    causal, as flash_attn_varlen_func). The batch is scattered into padded
    ``[B, H, L, D]`` tensors with a block-diagonal causal mask; no host syncs and
    no loop over sequences (``max_seqlen_*`` are host integers)."""
    device = q.device
    num_seqs = cu_seqlens_q.shape[0] - 1
    lq, lk = max(int(max_seqlen_q), 1), max(int(max_seqlen_k), 1)
    cu_q, cu_k = cu_seqlens_q.long(), cu_seqlens_k.long()
    len_q, len_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]

    def scatter(x, cu, width):
        seq = torch.searchsorted(cu[1:], torch.arange(x.shape[0], device=device), right=True)
        pos = torch.arange(x.shape[0], device=device) - cu[seq]
        out = x.new_zeros(num_seqs, width, *x.shape[1:])
        out[seq, pos] = x
        return out.transpose(1, 2), seq, pos

    qp, q_seq, q_pos = scatter(q, cu_q, lq)
    kp, _, _ = scatter(k, cu_k, lk)
    vp, _, _ = scatter(v, cu_k, lk)
    rows = torch.arange(lq, device=device).view(1, lq, 1)
    cols = torch.arange(lk, device=device).view(1, 1, lk)
    shift = (len_k - len_q).view(-1, 1, 1)
    mask = (cols < len_k.view(-1, 1, 1)) & (cols <= rows + shift)
    mask = mask | (rows >= len_q.view(-1, 1, 1))  # padded query rows: any finite value
    out = torch.nn.functional.scaled_dot_product_attention(
        qp, kp, vp, attn_mask=mask.unsqueeze(1), scale=softmax_scale
    )
    return out.transpose(1, 2)[q_seq, q_pos]


def to_model_dtype(
    x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor
) -> torch.Tensor:
    """``x`` as ``dtype`` for ``mla_prefill_fwd``, which takes no FP8 scales:
    unchanged when it already is, dequantised by its per-tensor ``scale`` when
    it is FP8, plainly cast otherwise."""
    if x.dtype == dtype:
        return x
    y = x.to(dtype)
    if x.dtype.is_floating_point and x.element_size() == 1:
        y.mul_(scale.to(device=y.device, dtype=dtype))
    return y
'''

TRITON_DECODE = '''
def _forward_decode_triton(self, q, kv_buffer, paged_kv_indptr, paged_kv_indices):
    """Decode (one query token per sequence) through AITER's Triton MLA kernel."""
    B = q.shape[0]
    num_kv_splits = 16
    o = torch.empty(
        B, self.num_heads, self.kv_lora_rank, dtype=self.dtype, device=q.device
    )
    k_buffer = kv_buffer.reshape(-1, 1, q.shape[-1])
    attn_logits = torch.empty(
        B,
        self.num_heads,
        num_kv_splits,
        self.kv_lora_rank + 1,
        dtype=torch.float32,
        device=q.device,
    )
    triton_mla_decode_kernel()(
        q.to(self.dtype),
        k_buffer,
        k_buffer[..., : self.kv_lora_rank],
        o,
        paged_kv_indptr,
        paged_kv_indices,
        None,
        self.kv_lora_rank,
        self.qk_rope_head_dim,
        None,
        None,
        attn_logits,
        num_kv_splits,
        self.scale,
        logit_cap=0.0,
        use_rope=False,
        is_neox_style=False,
    )
    return self._v_up_proj_and_o_proj(o)
'''

PAGED_PREFILL = """
if self.kv_cache_dtype.startswith("fp8") and max_q_len == 1:
    mla_decode_fwd(
        q,
        kv_c_and_k_pe_cache.view(-1, 1, 1, q.shape[-1]),
        o,
        paged_cu_seqlens_q,
        paged_kv_indptr,
        paged_kv_indices,
        kv_last_page_lens,
        max_q_len,
        self.scale,
        0.0,
        None,
        q_scale=self._q_scale,
        kv_scale=self._k_scale,
    )
else:
    # mla_decode_fwd takes FP8 scales for one query token per sequence only;
    # longer FP8 prefills go to mla_prefill_fwd in the model dtype.
    q = to_model_dtype(q, self.dtype, self._q_scale)
    kv_c_and_k_pe_cache = to_model_dtype(
        kv_c_and_k_pe_cache, self.dtype, self._k_scale
    )
    mla_prefill_fwd(
        q,
        kv_c_and_k_pe_cache.view(-1, 1, 1, q.shape[-1]),
        o,
        paged_cu_seqlens_q,
        paged_kv_indptr,
        paged_kv_indices,
        kv_last_page_lens,
        max_q_len,
        self.scale,
        0.0,
        None,
    )
"""

EDITS = [
    ReplaceStatement(
        "attention-mla.flash-attn-import-optional",
        scope="",
        anchor=stmt(AITER_IMPORT),
        code=AITER_IMPORT.replace("    flash_attn_varlen_func,\n", ""),
    ),
    InsertStatements(
        "attention-mla.import-importlib",
        scope="",
        before=stmt("import logging"),
        code="import importlib",
    ),
    InsertStatements(
        "attention-mla.import-cache",
        scope="",
        before=stmt("from functools import partial as functools_partial"),
        code="from functools import cache as functools_cache",
    ),
    InsertStatements(
        "attention-mla.helpers",
        scope="",
        before=defn("is_rocm_aiter_fp4bmm_enabled"),
        code=HELPERS,
    ),
    WrapInCondition(
        "attention-mla.prefill-without-flash-attn",
        scope="MLAAttention._forward_prefill_mha",
        anchor=matching(
            m.SimpleStatementLine(
                body=[m.Assign(value=m.Call(func=m.Name("flash_attn_varlen_func")))]
            ),
            "`output = flash_attn_varlen_func(...)`",
        ),
        condition="flash_attn_varlen_func is not None and not envs.ck_free_mode()",
        orelse="""
        output = varlen_causal_attention(
            q,
            k,
            v,
            attn_metadata.cu_seqlens_q,
            attn_metadata.cu_seqlens_k,
            attn_metadata.max_seqlen_q,
            attn_metadata.max_seqlen_k,
            self.scale,
        )
        """,
    ),
    InsertStatements(
        "attention-mla.triton-decode-route",
        scope="MLAAttention._forward_decode",
        before=stmt("dp_size = get_dp_group().world_size"),
        code="""
        if attn_metadata.max_seqlen_q == 1 and use_triton_mla_decode():
            return self._forward_decode_triton(
                q, kv_buffer, paged_kv_indptr, paged_kv_indices
            )
        """,
    ),
    ReplaceStatement(
        "attention-mla.fp8-scales-for-one-query-token",
        scope="MLAAttention._forward_prefill_mla",
        anchor=if_test('self.kv_cache_dtype.startswith("fp8")'),
        code=PAGED_PREFILL,
    ),
    InsertStatements(
        "attention-mla.triton-decode",
        scope="MLAAttention",
        before=defn("forward"),
        code=TRITON_DECODE,
    ),
]
