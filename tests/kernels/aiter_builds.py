"""AITER's Triton kernels that the CK-free paths call, launched as ATOM launches them.

AITER's Python comes from its git history at the commit that matches the ATOM pin
(atom_ckfree.aiter_source), imported through stub packages
(benchmarks/aiter_peer.stub_packages). Its entry points run on ``meta`` tensors
with the arguments ATOM's attention modules pass at real model shapes, while
Triton's active driver answers the chip (AITER reads the architecture from it)
and ``torch.cuda`` the chip's compute-unit count; every kernel launch they make is
recorded (launch_recorder.py) and built by amd_builds.py.

Shapes: Llama-3.1-8B (32 query / 8 KV heads of 128, neox RoPE, 16-token blocks;
ATOM's non-flash cache layout: K ``[blocks, heads, D / x, 16, x]``, V
``[blocks, heads, D, 16]``, ``x = 16 / element size``), a 2 x 512-token prefill
and a 64-sequence decode at 2048 tokens of context; DeepSeek-V3 MLA decode at
TP8 (16 heads, kv_lora_rank 512, rope 64, 16 KV splits as series 3 passes).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import pathlib
import sys
import types
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parents[2]

# (chip) -> compute units, for AITER's grid sizing (torch.cuda's answer on the card).
COMPUTE_UNITS = {"gfx942": 304, "gfx950": 256}

MODULES = {
    "fused_kv_cache": "aiter.ops.triton.fusions.fused_kv_cache",
    "unified_attention": "aiter.ops.triton.attention.unified_attention",
    "pa_decode_gluon": "aiter.ops.triton.gluon.pa_decode_gluon",
    "mla_decode_rope": "aiter.ops.triton.attention.mla_decode_rope",
}


class Case(NamedTuple):
    entry: str  # AITER function
    kv: str  # "bf16" or "fp8" (the chip's FP8)


CASES = {
    "rope-cache llama-3.1-8b bf16-kv": Case("fused_qk_rope_reshape_and_cache", "bf16"),
    "rope-cache llama-3.1-8b fp8-kv": Case("fused_qk_rope_reshape_and_cache", "fp8"),
    "unified-attention llama-3.1-8b prefill": Case("unified_attention", "bf16"),
    "pa-decode llama-3.1-8b bf16-kv": Case("pa_decode_gluon", "bf16"),
    "pa-decode llama-3.1-8b fp8-kv": Case("pa_decode_gluon", "fp8"),
    "mla-decode deepseek-v3 bf16-kv": Case("decode_attention_fwd_grouped_rope", "bf16"),
    "mla-decode deepseek-v3 fp8-kv": Case("decode_attention_fwd_grouped_rope", "fp8"),
}


def aiter_package() -> tuple[pathlib.Path | None, str]:
    """(AITER's package directory at the pinned commit, a description), or
    (None, why not)."""
    sys.path.insert(0, str(ROOT))
    from atom_ckfree import aiter_source

    return aiter_source.pinned_package()


def _chip_driver(target):
    from triton.backends.driver import DriverBase

    class ChipDriver(DriverBase):
        """Triton's active driver as AITER queries it: the chip's target."""

        def is_active(self):
            return True

        def map_python_to_cpp_type(self, ty):
            raise NotImplementedError

        def get_current_target(self):
            return target

        def get_current_device(self):
            return 0

        def get_active_torch_device(self):
            import torch

            return torch.device("meta")

        def get_benchmarker(self):
            raise NotImplementedError

    return ChipDriver()


@contextlib.contextmanager
def as_chip(chip: str, target):
    """Triton's driver answers ``target``; torch.cuda the chip's compute units."""
    import torch
    import triton

    props = types.SimpleNamespace(multi_processor_count=COMPUTE_UNITS[chip])
    real = torch.cuda.get_device_properties, torch.cuda.current_device
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.current_device = lambda: 0
    triton.runtime.driver.set_active(_chip_driver(target))
    try:
        yield
    finally:
        triton.runtime.driver.set_active(None)  # back to "not chosen yet"
        torch.cuda.get_device_properties, torch.cuda.current_device = real


def load_modules(package: pathlib.Path, chip: str, fp8) -> dict:
    """AITER's modules of MODULES, imported for ``chip`` (``aiter.dtypes`` is the
    stand-in of AITER's per-architecture dtype table: ``fp8`` is the chip's)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from aiter_peer import stub_packages

    aiter = stub_packages(package, "jit", "jit.utils")
    aiter.dtypes = types.SimpleNamespace(
        fp8=fp8, bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32
    )
    return {key: importlib.import_module(name) for key, name in MODULES.items()}


def run_case(mods: dict, case: Case, fp8, chip: str) -> None:
    """Call AITER's entry point of ``case`` with ATOM's arguments (meta tensors)."""
    import torch

    meta = torch.device("meta")
    bf16, f32, i32 = torch.bfloat16, torch.float32, torch.int32
    kv = bf16 if case.kv == "bf16" else fp8

    def t(*shape, dtype=bf16):
        return torch.empty(*shape, dtype=dtype, device=meta)

    QH, KH, D, BS = 32, 8, 128, 16
    x = 16 // t(1, dtype=kv).element_size()
    scale = 1.0 / math.sqrt(D)
    kv_scale = t(1, dtype=f32)
    if case.entry == "fused_qk_rope_reshape_and_cache":
        T = 1024
        q, k, v = t(T, QH, D), t(T, KH, D), t(T, KH, D)
        mods["fused_kv_cache"].fused_qk_rope_reshape_and_cache(
            q, k, v,
            t(4096, KH, D // x, BS, x, dtype=kv), t(4096, KH, D, BS, dtype=kv),
            t(T, dtype=torch.int64), t(T, dtype=torch.int64),
            t(131072, 1, 1, D // 2), t(131072, 1, 1, D // 2),
            kv_scale, kv_scale, True,
            flash_layout=False, apply_scale=case.kv == "fp8", offs=None,
            q_out=q, k_out=k, output_zeros=False,
        )  # fmt: skip
    elif case.entry == "unified_attention":
        # Prefill: the new K/V as a cache of one-token blocks (ATOM's fake tables).
        B, L = 2, 512
        T = B * L
        q, k = t(T, QH, D), t(T, KH, D)
        mods["unified_attention"].unified_attention(
            q, k.unsqueeze(1), t(T, KH, D).unsqueeze(1), torch.empty_like(q),
            cu_seqlens_q=t(B + 1, dtype=i32), seqused_k=t(B, dtype=i32),
            max_seqlen_q=L, max_seqlen_k=L, softmax_scale=scale, causal=True,
            alibi_slopes=None, window_size=(-1, -1), block_table=t(B, L, dtype=i32),
            softcap=0, q_descale=None, k_descale=kv_scale.expand(B, KH),
            v_descale=kv_scale.expand(B, KH), sinks=None,
        )  # fmt: skip
    elif case.entry == "pa_decode_gluon":
        B, ctx = 64, 2048
        gluon = mods["pa_decode_gluon"]
        parts = gluon.get_recommended_splits(B, KH)
        shape = (B, KH, parts, QH // KH)
        q = t(B, QH, D)
        fp8_kv = case.kv == "fp8"
        gluon.pa_decode_gluon(
            torch.empty_like(q), q,
            t(B * ctx // BS, KH, D // x, BS, x, dtype=kv),
            t(B * ctx // BS, KH, D, BS, dtype=kv),
            t(B, dtype=i32), t(B, ctx // BS, dtype=i32), scale, 1, parts, 256,
            kv, None, kv_scale if fp8_kv else None, kv_scale if fp8_kv else None,
            exp_sums=t(*shape, dtype=f32), max_logits=t(*shape, dtype=f32),
            temporary_output=t(*shape, D), alibi_slopes=None, sinks=None,
            sliding_window=-1, ps=True,
        )  # fmt: skip
    else:
        B, ctx, H, rank, rope, splits = 64, 2048, 16, 512, 64, 16
        k_buffer = t(B * ctx, 1, rank + rope, dtype=kv)
        mods["mla_decode_rope"].decode_attention_fwd_grouped_rope(
            t(B, H, rank + rope), k_buffer, k_buffer[..., :rank], t(B, H, rank),
            t(B + 1, dtype=i32), t(B * ctx, dtype=i32), None, rank, rope,
            None, None, t(B, H, splits, rank + 1, dtype=f32), splits,
            1.0 / math.sqrt(192), logit_cap=0.0, use_rope=False,
            is_neox_style=False,
        )  # fmt: skip


def aiter_launches(chip: str, target, fp8) -> tuple[dict, str]:
    """({case: [launches] or the error its host code raised}, where AITER came
    from); the dict is empty when no AITER source is found."""
    from launch_recorder import recording, unique

    package, where = aiter_package()
    if package is None:
        return {}, where
    out = {}
    with as_chip(chip, target):
        mods = load_modules(package, chip, fp8)
        for name, case in CASES.items():
            try:
                with recording(name) as got:
                    run_case(mods, case, fp8, chip)
                out[name] = unique(got)
            except Exception as exc:  # noqa: BLE001 - reported per case
                out[name] = f"host code: {type(exc).__name__}: {exc}"[-3000:]
    return out, where
