"""vLLM's Triton MoE as a benchmark peer, loaded at run time from vLLM's own files.

Nothing of vLLM is copied into this project. ``extract(wheel, dest)`` takes, from a
``vllm`` wheel, ``vllm/model_executor/layers/fused_moe/fused_moe.py`` and the
shipped config JSONs of the card into an ignored folder; ``load_vllm_peer(dest)``
then writes the two Triton functions the GEMMs need (``fused_moe_kernel`` and the
``write_zeros_to_output`` it calls), cut verbatim out of that file by ``ast``, into
a module in the same folder and imports it (vLLM's package itself needs its
compiled extensions and CUDA build).

The peer launches ``fused_moe_kernel`` as vLLM's ``invoke_fused_moe_triton_kernel``
does for FP8 W8A8 on an sm_90 card: swap-AB below 64-row blocks with >= 64-wide
N tiles, the weights through a tensor descriptor (TMA) for block-FP8 weights,
activations through pointers, the small-batch EM bound; configs as
``try_get_optimal_moe_config`` picks them (the shipped file of the card, the
closest batch size; vLLM's ``get_default_config`` rules for block FP8 where it
ships none). The pipeline is composed as ``fused_experts`` does: one alignment,
activation quantisation, GEMM1, SiLU * up, quantisation, GEMM2 with the routing
weights, top-k sum. Glue where vLLM uses its CUDA ops: our Triton alignment (same
layout) and quantisation kernels, torch for SiLU * up and the top-k sum.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib
import sys
import zipfile

import torch
import triton

_FUSED_MOE = "vllm/model_executor/layers/fused_moe/fused_moe.py"
_CONFIGS = "vllm/model_executor/layers/fused_moe/configs/"
_KERNELS = ("write_zeros_to_output", "fused_moe_kernel")


def extract(wheel: pathlib.Path, dest: pathlib.Path, card_slug: str) -> None:
    """fused_moe.py and the card's shipped configs from the wheel into dest."""
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name == _FUSED_MOE or (
                name.startswith(_CONFIGS) and f"device_name={card_slug}" in name
            ):
                z.extract(name, dest)


def _write_kernel_module(root: pathlib.Path) -> pathlib.Path:
    src = (root / _FUSED_MOE).read_text()
    lines = src.splitlines()
    parts = ["import triton", "import triton.language as tl", ""]
    found = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and node.name in _KERNELS:
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            found[node.name] = "\n".join(lines[first - 1 : node.end_lineno])
    missing = [k for k in _KERNELS if k not in found]
    if missing:
        raise RuntimeError(f"{_FUSED_MOE} has no {', '.join(missing)}")
    out = root / "vllm_fused_moe_kernels.py"
    # fused_moe.py stacks two @triton.jit on fused_moe_kernel: keep one.
    body = [
        found[k].replace("@triton.jit\n@triton.jit", "@triton.jit") for k in _KERNELS
    ]
    out.write_text("\n".join(parts) + "\n\n" + "\n\n\n".join(body) + "\n")
    return out


class VllmPeer:
    def __init__(self, root: pathlib.Path, tm):
        self.root = root
        self.tm = tm
        path = _write_kernel_module(root)
        spec = importlib.util.spec_from_file_location("vllm_fused_moe_kernels", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        self.kernel = mod.fused_moe_kernel
        if torch.cuda.is_available():
            triton.set_allocator(
                lambda size, align, stream: torch.empty(
                    size, dtype=torch.int8, device="cuda"
                )
            )

    # -- configs ---------------------------------------------------------------
    def config(self, card_slug, E, N, M, block_shape):
        """(config, where from) as try_get_optimal_moe_config picks it."""
        dtype = ",dtype=fp8_w8a8"
        bs = (
            ""
            if block_shape is None
            else f",block_shape=[{block_shape[0]},{block_shape[1]}]"
        )
        name = f"E={E},N={N},device_name={card_slug}{dtype}{bs}.json"
        path = self.root / _CONFIGS / name
        if path.is_file():
            table = {
                int(k): v
                for k, v in json.loads(path.read_text()).items()
                if k != "triton_version"
            }
            return dict(table[min(table, key=lambda b: abs(b - M))]), "shipped"
        return _default_config(M, E, block_shape), "default"

    # -- launches --------------------------------------------------------------
    def gemm(self, A, B, C, A_scale, B_scale, tw, align, mul_routed, top_k, cfg, bs):
        """One fused_moe_kernel launch as invoke_fused_moe_triton_kernel makes it."""
        cfg = dict(cfg)
        bm, bn = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"]
        cap = _capability(A.device)
        swap_ab = cap == (9, 0) and bm < 64 and bn >= 64
        bk = cfg.pop("BLOCK_SIZE_K")
        if bs is not None:
            bk = min(bk, min(bs))
        use_tma = bool(cfg.pop("USE_TMA", True))
        cfg["SPLIT_K"] = 1
        use_tma_b = (
            use_tma
            and bs is not None
            and cap[0] in (9, 10)
            and B.is_contiguous()
            and B.size(1) % bn == 0
            and B.size(2) % bk == 0
        )
        b_desc = None
        if use_tma_b:
            from triton.tools.tensor_descriptor import TensorDescriptor

            b_desc = TensorDescriptor.from_tensor(B, [1, bn, bk])
        sorted_ids = align.sorted_token_ids
        EM = sorted_ids.size(0)
        if A.size(0) < bm:
            EM = min(EM, A.size(0) * top_k * bm)
        num_tokens = A.size(0) * top_k
        grid = (triton.cdiv(EM, bm) * triton.cdiv(B.size(1), bn),)
        if A_scale.ndim == 0:
            A_scale = A_scale.reshape(1)
        self.kernel[grid](
            A,
            B,
            b_desc,
            C,
            None,
            A_scale,
            B_scale,
            tw,
            sorted_ids,
            align.expert_ids,
            align.num_tokens_post_padded,
            None,
            B.size(1),
            B.size(2),
            EM,
            num_tokens,
            A.stride(0),
            A.stride(1),
            B.stride(0),
            B.stride(2),
            B.stride(1),
            C.stride(1),
            C.stride(2),
            A_scale.stride(0) if A_scale.ndim == 2 else 0,
            A_scale.stride(1) if A_scale.ndim == 2 else 0,
            B_scale.stride(0),
            B_scale.stride(2) if B_scale.ndim == 3 else 0,
            B_scale.stride(1) if B_scale.ndim >= 2 and B_scale.size(1) > 1 else 0,
            0,
            0,
            0 if bs is None else bs[0],
            0 if bs is None else bs[1],
            MUL_ROUTED_WEIGHT=mul_routed,
            top_k=top_k,
            compute_type=triton.language.bfloat16,
            use_fp8_w8a8=True,
            use_int8_w8a8=False,
            use_int8_w8a16=False,
            per_channel_quant=False,
            naive_block_assignment=False,
            HAS_BIAS=False,
            BLOCK_SIZE_K=bk,
            SWAP_AB=swap_ab,
            USE_TD=False,
            USE_TMA_B=use_tma_b,
            USE_TMA_A=False,
            C_IS_SORTED=False,
            **cfg,
        )

    def prepare(self, x, w13, w2, s13, s2, tw, ti, bs, cfg, static=None):
        """Everything the two GEMMs read, computed once (for timing them alone),
        and the whole pipeline as a closure."""
        tm = self.tm
        M, K = x.shape
        E, two_n, _ = w13.shape
        N = two_n // 2
        top_k = ti.shape[1]
        fp8 = w13.dtype
        fmax = torch.finfo(fp8).max
        tw = tw.contiguous()

        def quant(a, static_scale):
            if bs is not None:
                return tm.per_token_group_quant_fp8(a, bs[1], fp8)
            if static_scale is not None:
                return tm.static_quant_fp8(a, static_scale, fp8), static_scale
            s = (a.abs().amax().float() / fmax).reshape(1)  # dynamic per tensor
            return tm.static_quant_fp8(a, s, fp8), s

        a13, a2 = static or (None, None)
        c1 = torch.empty(M, top_k, two_n, dtype=x.dtype, device=x.device)
        c3 = torch.empty(M, top_k, K, dtype=x.dtype, device=x.device)

        def gemm1(align, xq, xs):
            self.gemm(xq, w13, c1, xs, s13, tw, align, False, top_k, cfg, bs)

        def gemm2(align, hq, hs):
            self.gemm(hq, w2, c3, hs, s2, tw, align, True, 1, cfg, bs)

        def silu_mul():
            c = c1.view(M * top_k, two_n)
            return torch.nn.functional.silu(c[:, :N]) * c[:, N:]

        def pipeline():
            align = tm.moe_align_block_size(ti, cfg["BLOCK_SIZE_M"], E)
            xq, xs = quant(x, a13)
            gemm1(align, xq, xs)
            hq, hs = quant(silu_mul(), a2)
            gemm2(align, hq, hs)
            return c3.sum(dim=1)

        align = tm.moe_align_block_size(ti, cfg["BLOCK_SIZE_M"], E)
        xq, xs = quant(x, a13)
        gemm1(align, xq, xs)
        hq, hs = quant(silu_mul(), a2)

        def gemms_alone():
            gemm1(align, xq, xs)
            gemm2(align, hq, hs)

        return gemms_alone, pipeline


def _capability(device):
    if device.type != "cuda":
        return (0, 0)  # the Triton interpreter: no swap-AB, no TMA
    return torch.cuda.get_device_capability(device)


def _default_config(M, E, block_shape):
    # vLLM's get_default_config for FP8 W8A8 on CUDA (fused_moe.py), the branches
    # this benchmark's shapes reach.
    if block_shape is not None:
        block_n = 64 if M <= 8 and block_shape[0] % 64 == 0 else block_shape[0]
        stages = (4 if M <= 4 else 3) if M <= 8 and block_shape[0] % 64 == 0 else 3
        return {
            "BLOCK_SIZE_M": 16 if M <= 64 else 64,
            "BLOCK_SIZE_N": block_n,
            "BLOCK_SIZE_K": block_shape[1],
            "GROUP_SIZE_M": 1 if M <= 16 else 32,
            "num_warps": 4,
            "num_stages": stages,
        }
    bm = 16 if M <= 32 else 32 if M <= 96 else 64 if M <= 512 else 128
    return {
        "BLOCK_SIZE_M": bm,
        "BLOCK_SIZE_N": 64 if M <= 64 else 128,
        "BLOCK_SIZE_K": 128,
        "GROUP_SIZE_M": 16 if M // max(E, 1) > 128 else 1,
        "num_warps": 4 if M <= 128 else 8,
        "num_stages": 4 if M <= 32 else 3,
    }


def load_vllm_peer(root: pathlib.Path, tm):
    """(peer, None) or (None, reason)."""
    if not (root / _FUSED_MOE).is_file():
        return None, f"vLLM's fused_moe.py not extracted under {root}"
    try:
        return VllmPeer(root, tm), None
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return None, f"loading vLLM's fused_moe_kernel failed: {exc!r}"
