"""ATOM's patched MHA ``Attention`` end to end: a prefill, then decode steps over a
paged KV cache, against plain torch attention.

The layer runs on AITER's real Triton kernels (fused RoPE + cache, RoPE,
``unified_attention``) and the overlay's ASM-layout cache writer; ASM paged
attention, the Gluon paged decode and CK's varlen attention are the stand-ins of
``overlay/tests/fake_aiter/contracts.py`` (atom_layers.py). Each case picks a path:
the CK-free mode (``ATOM_CK_FREE=1``, or an AITER without CK) with ASM PA (head 128,
no sliding window) or Triton PA (other heads, a sliding window, or
``AITER_FORCE_TRITON_ATTN=1``), and the flag off with CK (upstream's kernels).

fp16 where the model runs bf16 (the Triton interpreter computes bf16 wrongly, see
test_contracts.py); on a GPU the same cases run at larger sizes.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest
import torch

from .reference import attention, rms_norm, rope

pytestmark = pytest.mark.aiter

HALF = torch.float16
BASE = 10000.0


@dataclass(frozen=True)
class Case:
    head: int
    kv: str = "bf16"  # ATOM's kv_cache_dtype: "bf16" (the model dtype) or "fp8"
    window: int | None = None
    env: tuple = (("ATOM_CK_FREE", "1"),)
    ck: bool = True
    norms: bool = True  # q_norm / k_norm (Qwen3-style), CK-free paths only
    backend: str = "asm"  # the decode backend: asm, asm-persistent or triton
    block: int = 16  # tokens a cache block (1024: ATOM's persistent ASM PA)


CK_FREE_FORCE_TRITON = (("ATOM_CK_FREE", "1"), ("AITER_FORCE_TRITON_ATTN", "1"))
CASES = {
    "asm-h128": Case(128),
    "asm-h128-fp8": Case(128, "fp8"),
    "asm-h128-no-ck": Case(128, env=(), ck=False),
    "asm-persistent-h128": Case(128, backend="asm-persistent", block=1024),
    "asm-persistent-h128-fp8": Case(128, "fp8", backend="asm-persistent", block=1024),
    "triton-h64": Case(64, backend="triton"),
    "triton-h64-fp8": Case(64, "fp8", backend="triton"),
    "triton-h128-forced": Case(128, env=CK_FREE_FORCE_TRITON, backend="triton"),
    "triton-h128-forced-fp8": Case(
        128, "fp8", env=CK_FREE_FORCE_TRITON, backend="triton"
    ),
    "triton-h64-window": Case(64, window=6, backend="triton"),
    "flag-off-h128": Case(128, env=(), norms=False),
    "flag-off-h128-fp8": Case(128, "fp8", env=(), norms=False),
    "flag-off-h64": Case(64, env=(), norms=False, backend="triton"),
}
# Sizes: (query heads, kv heads, prompt lengths, decode steps, cache blocks)
SIZES = {"cpu": (4, 2, (5, 9), 3, 6), "cuda": (32, 8, (200, 77, 513), 4, 128)}


def _aiter_fp8():
    import aiter

    return aiter.dtypes.fp8


class Layer:
    """One patched ``Attention`` with its paged cache, driven step by step."""

    def __init__(self, atom, case: Case, g, device):
        self.case, self.device = case, device
        hq, hk, lens, _, num_blocks = SIZES[device]
        self.hq, self.hk, self.d = hq, hk, case.head
        mha = atom.module("atom.model_ops.attention_mha")
        rotary = atom.module("atom.model_ops.rotary_embedding")
        self.mha = mha
        norms = {}
        if case.norms:
            for name in ("q_norm", "k_norm"):
                norm = torch.nn.RMSNorm(case.head, eps=1e-6, device=device)
                norm.weight.data = 0.5 + torch.rand(case.head, generator=g).to(device)
                norms[name] = norm.to(HALF)
        self.norms = norms
        self.attn = mha.Attention(
            hq,
            case.head,
            case.head**-0.5,  # ASM PA's only scale
            hk,
            kv_cache_dtype=case.kv,
            layer_num=0,
            sliding_window=case.window,
            rotary_emb=rotary.RotaryEmbedding(
                case.head, case.head, 4096, BASE, True, HALF
            ).to(device),
            **norms,
        ).to(device)
        cache_dtype = _aiter_fp8() if case.kv == "fp8" else HALF
        x = 16 // cache_dtype.itemsize  # model_runner.py:1058
        self.kv_layer = types.SimpleNamespace(
            k_cache=torch.zeros(
                num_blocks, hk, case.head // x, case.block, x, dtype=cache_dtype
            ).to(device),
            v_cache=torch.zeros(
                num_blocks, hk, case.head, case.block, dtype=cache_dtype
            ).to(device),
            k_scale=None,
            v_scale=None,
        )
        if case.kv == "fp8":  # model_runner.py:1037-1045, 1087-1089
            for name in ("k_scale", "v_scale"):
                setattr(
                    self.kv_layer,
                    name,
                    torch.zeros(num_blocks, hk, case.block, device=device),
                )
        per_seq = num_blocks // len(lens)
        self.table = (
            torch.randperm(num_blocks, generator=g)[: per_seq * len(lens)]
            .view(len(lens), per_seq)
            .to(torch.int32)
            .to(device)
        )
        config = types.SimpleNamespace(kv_cache_block_size=case.block)
        mha.get_current_atom_config = lambda: config
        # what a model hands the layer, per sequence: q, k, v of every token so far
        self.history = [[] for _ in lens]

    def _slots(self, seq, positions):
        bs = self.case.block
        return self.table[seq, positions // bs].long() * bs + positions % bs

    def step(self, new_tokens, g, prefill):
        """One forward over ``new_tokens[s]`` new tokens of each sequence."""
        hq, hk, d = self.hq, self.hk, self.d
        starts = [h[-1][3] + h[-1][0].shape[0] if h else 0 for h in self.history]
        qs, ks, vs, pos, slots = [], [], [], [], []
        for s, n in enumerate(new_tokens):
            q = torch.randn(n, hq, d, generator=g).to(HALF).to(self.device)
            k = torch.randn(n, hk, d, generator=g).to(HALF).to(self.device)
            v = torch.randn(n, hk, d, generator=g).to(HALF).to(self.device)
            p = torch.arange(starts[s], starts[s] + n, device=self.device)
            self.history[s].append((q, k, v, starts[s]))
            qs.append(q)
            ks.append(k)
            vs.append(v)
            pos.append(p)
            slots.append(self._slots(s, p))
        lens = [a + n for a, n in zip(starts, new_tokens)]
        from atom.utils.forward_context import AttentionMetaData

        cu_q = torch.tensor([0, *torch.tensor(new_tokens).cumsum(0).tolist()])
        cu_k = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
        # the pages each sequence fills, packed (what persistent ASM PA reads)
        pages = [-(-n // self.case.block) for n in lens]
        kv_indices = torch.cat([self.table[s, :p] for s, p in enumerate(pages)])
        kv_indptr = torch.tensor([0, *torch.tensor(pages).cumsum(0).tolist()])
        metadata = AttentionMetaData(
            cu_seqlens_q=cu_q.to(torch.int32).to(self.device),
            cu_seqlens_k=cu_k.to(torch.int32).to(self.device),
            max_seqlen_q=max(new_tokens),
            max_seqlen_k=max(lens),
            min_seqlen_q=min(new_tokens),
            slot_mapping=torch.cat(slots),
            context_lens=torch.tensor(lens, dtype=torch.int32, device=self.device),
            block_tables=self.table,
            kv_indptr=kv_indptr.to(torch.int32).to(self.device),
            kv_indices=kv_indices,
        )
        fwd_ctx = types.SimpleNamespace(
            context=types.SimpleNamespace(is_dummy_run=False, is_prefill=prefill),
            attn_metadata=metadata,
            kv_cache_data={"layer_0": self.kv_layer},
        )
        self.mha.get_forward_context = lambda: fwd_ctx
        out = self.attn(
            torch.cat(qs).reshape(-1, hq * d).clone(),
            torch.cat(ks).reshape(-1, hk * d).clone(),
            torch.cat(vs).reshape(-1, hk * d).clone(),
            torch.cat(pos),
        )
        return out.view(-1, hq, d)

    def reference(self, new_tokens, from_cache):
        """Plain torch: norms, RoPE and causal (windowed) GQA attention over every
        token so far, for the newest ``new_tokens[s]`` queries of each sequence; K
        and V as an FP8 cache gives them back when the attention reads the cache
        (decode; a prefill attends to the fresh K and V)."""
        outs = []
        for s, n in enumerate(new_tokens):
            q, k, v = (torch.cat(parts) for parts in list(zip(*self.history[s]))[:3])
            positions = torch.arange(q.shape[0], device=self.device)
            if self.norms:
                q = rms_norm(q, self.norms["q_norm"].weight, 1e-6)
                k = rms_norm(k, self.norms["k_norm"].weight, 1e-6)
            q, k = rope(q, positions, BASE), rope(k, positions, BASE)
            if self.case.kv == "fp8" and from_cache:
                k, v = self._fp8_round_trip(k), self._fp8_round_trip(v)
            window = -1 if self.case.window is None else self.case.window - 1
            o = attention(q[-n:], k, v, self.d**-0.5, causal=True, window_left=window)
            outs.append(o)
        return torch.cat(outs)

    def _fp8_round_trip(self, x):
        """What an FP8 cache gives back of ``x`` ``[t, heads, d]``: per (token, head)
        scale ``amax / fp8 max`` where ASM PA reads it (per-token quantisation, as
        upstream's ASM path), else the layer's one per-tensor ``kv_scale``."""
        fp8 = _aiter_fp8()
        x = x.to(HALF).float()
        if self.case.backend.startswith("asm"):
            scale = x.abs().amax(-1, keepdim=True) / torch.finfo(fp8).max
        else:
            scale = torch.tensor(self.attn.kv_scale_float)
        return ((x * (1 / scale)).to(fp8).float() * scale).double()


def _tolerance(case):
    # the reference rounds K and V through FP8 as the cache does; what is left is
    # 16-bit arithmetic and the odd FP8 value that rounds the other way
    return (3e-2, 1e-2) if case.kv == "fp8" else (2e-2, 1e-2)


def _calls(fake):
    return {name.rsplit(".", 1)[-1] for name in fake.names()}


@pytest.mark.parametrize("name", list(CASES))
def test_prefill_then_decode_matches_torch(atom_on_aiter, device, name):
    case = CASES[name]
    atom = atom_on_aiter(ck=case.ck, env=dict(case.env))
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    layer = Layer(atom, case, g, device)
    _, _, lens, steps, _ = SIZES[device]
    atol, rtol = _tolerance(case)
    got = layer.step(list(lens), g, prefill=True)
    want = layer.reference(lens, from_cache=False)
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)
    for _ in range(steps):
        atom.fake.clear()
        ones = [1] * len(lens)
        got = layer.step(ones, g, prefill=False)
        want = layer.reference(ones, from_cache=True)
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)
        calls = _calls(atom.fake)
        assert ("pa_fwd_asm" in calls) == (case.backend == "asm"), calls
        persistent = case.backend == "asm-persistent"
        assert ("pa_persistent_fwd" in calls) == persistent, calls
        assert ("pa_decode_gluon" in calls) == (case.backend == "triton"), calls
    if case.env or not case.ck:  # the CK-free mode
        assert atom.fake.touched_ck() == []
