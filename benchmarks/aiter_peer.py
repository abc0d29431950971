"""The AITER peer of issue 5, loaded from an installed ``amd-aiter`` wheel.

The peer is the RFC's CK-free composition of AITER's pure-Triton MoE kernels:
``moe_align_block_size_triton`` -> torch per-token-group FP8 quantisation ->
``fused_moe_silu`` -> a second alignment with top_k=1 -> torch quantisation of the
intermediate -> ``fused_moe`` with the routing weights -> sum over top_k.
(Per-tensor weights: AITER's kernels quantise the activations per tensor
themselves, so the two torch quantisation steps are skipped.)

Nothing of AITER is copied here. Its Triton modules are imported from the wheel's
files through stub packages ``aiter``, ``aiter.ops`` and ``aiter.ops.triton``
whose ``__path__`` points into the installed wheel (AITER's own package
``__init__`` needs its compiled extensions and ROCm), with three runtime patches
that let them compile and pick configs on sm_90:

* ``get_num_xcds()`` answers 1 (no XCD remapping on a single-die GPU);
* the arch lookup answers gfx942 / "MI300X", so AITER picks its shipped MI300X
  FP8 configs;
* the AMD-only config keys ``waves_per_eu``, ``matrix_instr_nonkdim`` and
  ``kpack`` are dropped before launch.

Usage::

    peer = load_aiter_peer()          # None + reason when the wheel is missing
    out = peer.run(x, w13, w2, s13, s2, tw, ti, block_shape)           # shipped
    out = peer.run(..., config=peer.SWEEP[0])                          # a sweep cfg
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
import types

import torch

_AMD_ONLY = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")


def _find_aiter_dir() -> pathlib.Path | None:
    for entry in sys.path:
        cand = pathlib.Path(entry or ".") / "aiter" / "ops" / "triton"
        if (cand / "moe_op.py").is_file():
            return cand.parents[1]
    return None


def stub_packages(root: pathlib.Path, *packages: str) -> types.ModuleType:
    """Stub packages ``aiter``, ``aiter.ops``, ``aiter.ops.triton`` and
    ``packages`` (dotted names below ``aiter``) whose ``__path__`` points into the
    AITER package directory ``root``, so that AITER's Python modules import
    without AITER's own package ``__init__`` files. Returns the ``aiter`` stub."""
    top = None
    for sub in ("", "ops", "ops.triton", *packages):
        name = f"aiter.{sub}" if sub else "aiter"
        mod = types.ModuleType(name)
        mod.__path__ = [str(root.joinpath(*sub.split(".")) if sub else root)]
        mod.__package__ = name
        sys.modules[name] = mod
        top = top or mod
    return top


class AiterPeer:
    """AITER's Triton MoE kernels composed as in issue 5."""

    # A small launch-config sweep (applied to both GEMMs), per M bucket:
    # (BLOCK_SIZE_M, BLOCK_SIZE_N, GROUP_SIZE_M, num_warps, num_stages).
    SWEEP_SMALL = (
        (16, 64, 1, 4, 4),
        (16, 128, 1, 4, 3),
        (32, 64, 1, 4, 4),
        (64, 64, 1, 4, 3),
    )
    SWEEP_LARGE = (
        (32, 128, 8, 4, 4),
        (64, 128, 8, 4, 3),
        (64, 128, 8, 8, 3),
        (128, 128, 8, 8, 3),
    )

    def __init__(self, root: pathlib.Path):
        self.root = root
        stub_packages(root)
        # Patch 1: one XCD. Patch the defining module before the wrappers bind the
        # name, and the wrappers' own binding afterwards.
        dev_info = importlib.import_module("aiter.ops.triton.utils.device_info")
        dev_info.get_num_xcds = lambda: 1
        # Patch 2: the arch lookup answers MI300X (gfx942) -> shipped FP8 configs.
        arch = importlib.import_module("aiter.ops.triton.utils._triton.arch_info")
        arch.get_arch = lambda: "gfx942"
        arch.get_device = lambda: "MI300X"
        self.cfg_utils = importlib.import_module(
            "aiter.ops.triton.utils.moe_config_utils"
        )
        self.align_mod = importlib.import_module(
            "aiter.ops.triton.moe_align_block_size"
        )
        self.silu_mod = importlib.import_module("aiter.ops.triton.moe_op_silu_fused")
        self.moe_mod = importlib.import_module("aiter.ops.triton.moe_op")
        for m in (self.silu_mod, self.moe_mod):
            if hasattr(m, "get_num_xcds"):
                m.get_num_xcds = lambda: 1
        import triton.language as tl

        self.compute_type = tl.bfloat16

    # ------------------------------------------------------------------------------
    @staticmethod
    def _clean(cfg: dict) -> dict:
        # Patch 3: drop the AMD-only keys; BLOCK_SIZE_K stays 128 (= the scale group).
        out = {k: v for k, v in cfg.items() if k not in _AMD_ONLY}
        out.setdefault("BLOCK_SIZE_K", 128)
        return out

    def shipped_config(self, M: int) -> dict:
        cfg = self.cfg_utils.get_optimal_moe_config(
            torch.bfloat16, use_fp8_w8a8=True, M=M
        )
        return self._clean(cfg)

    def sweep(self, M: int) -> list[dict]:
        keys = (
            "BLOCK_SIZE_M",
            "BLOCK_SIZE_N",
            "GROUP_SIZE_M",
            "num_warps",
            "num_stages",
        )
        base = self.SWEEP_SMALL if M <= 32 else self.SWEEP_LARGE
        return [self._clean(dict(zip(keys, c, strict=True))) for c in base]

    def _align(self, ids: torch.Tensor, num_experts: int, block_m: int):
        numel = ids.numel()
        max_padded = numel + num_experts * (block_m - 1)
        dev = ids.device
        sorted_ids = torch.empty(max_padded, dtype=torch.int32, device=dev)
        sorted_ids.fill_(numel)
        expert_ids = torch.empty(
            (max_padded + block_m - 1) // block_m, dtype=torch.int32, device=dev
        )
        post_pad = torch.empty(1, dtype=torch.int32, device=dev)
        self.align_mod.moe_align_block_size_triton(
            ids, num_experts, block_m, sorted_ids, expert_ids, post_pad
        )
        return sorted_ids, expert_ids, post_pad

    @staticmethod
    def _group_quant(x: torch.Tensor, group: int, fp8: torch.dtype):
        # torch per-token-group quantisation (the composition's torch step).
        M, K = x.shape
        fmax = torch.finfo(fp8).max
        xg = x.float().view(M, K // group, group)
        s = xg.abs().amax(-1).clamp(min=1e-10) / fmax
        q = (xg / s[:, :, None]).clamp(-fmax, fmax).to(fp8)
        return q.view(M, K), s

    def run(self, x, w13, w2, s13, s2, tw, ti, block_shape, config=None):
        M, K = x.shape
        E = w13.shape[0]
        N = w2.shape[2]
        top_k = ti.shape[1]
        fp8 = w13.dtype
        cfg = self.shipped_config(M) if config is None else self._clean(config)
        bm = cfg["BLOCK_SIZE_M"]
        bs = None if block_shape is None else list(block_shape)
        sorted1, eids1, pad1 = self._align(ti, E, bm)
        if bs is not None:
            xq, xs = self._group_quant(x, bs[1], fp8)
        else:
            xq, xs = x, None
        # fused_moe_silu indexes C with (stride(0), stride(1)): a 2-D [M * top_k, N].
        inter = torch.empty((M * top_k, N), dtype=x.dtype, device=x.device)
        self.silu_mod.fused_moe_silu(
            xq, w13, inter, xs, s13, None, tw, ti, sorted1, eids1, pad1,
            False, top_k, self.compute_type, True, False, False,
            block_shape=bs, config=dict(cfg),
        )  # fmt: skip
        ti2 = ti.reshape(-1, 1)
        sorted2, eids2, pad2 = self._align(ti2, E, bm)
        h = inter
        if bs is not None:
            hq, hs = self._group_quant(h, bs[1], fp8)
        else:
            hq, hs = h, None
        out = torch.empty((M * top_k, 1, K), dtype=x.dtype, device=x.device)
        self.moe_mod.fused_moe(
            hq, w2, out, hs, s2, None, tw.reshape(-1, 1), ti2, sorted2, eids2, pad2,
            True, 1, self.compute_type, True, False, False,
            block_shape=bs, config=dict(cfg),
        )  # fmt: skip
        return out.view(M, top_k, K).sum(dim=1)


def load_aiter_peer():
    """(peer, None) or (None, reason)."""
    root = _find_aiter_dir()
    if root is None:
        return None, "amd-aiter wheel not found on sys.path (aiter/ops/triton)"
    try:
        return AiterPeer(root), None
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return None, f"loading AITER's Triton modules failed: {exc!r}"
