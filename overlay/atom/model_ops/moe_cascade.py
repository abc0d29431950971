# SPDX-License-Identifier: MIT
"""The FP8 MoE backend cascade: CK, else FlyDSL, else the portable Triton pipeline.

``Fp8MoEMethod`` and ``CompressedTensorsFp8MoEMethod`` (``moe.py``) choose their
backend once, at construction, and hand the non-CK backends their layer here:
what the installed AITER and FlyDSL provide is found out once, the load-time
weight layout and requantisation follow the backend, and FlyDSL or Triton run the
MoE with the routing the CK path would get.
"""

import functools
import importlib.util
import logging
import os
from collections.abc import Callable

import torch
from aiter import QuantType

from atom.model_ops.utils import shuffle_weights
from atom.utils import envs

logger = logging.getLogger("atom")

MOE_BACKEND_CK = "ck"
MOE_BACKEND_FLYDSL = "flydsl"
MOE_BACKEND_TRITON = "triton"


@functools.cache
def _has_ck_moe_sorting() -> bool:
    """Whether the installed AITER can run CK's MoE sorting (``moe_sorting_fwd``,
    JIT module ``module_moe_sorting``), the first stage of every CK fused MoE.

    False for an AITER built with ``ENABLE_CK=0``; else True when the module is
    prebuilt or AITER can build it (the Composable Kernel sources are present).
    Only Python modules and files are looked at, nothing runs on the GPU;
    evaluated once.
    """
    import aiter

    if not callable(getattr(aiter, "moe_sorting_fwd", None)):
        return False
    try:
        from aiter.jit import core as aiter_jit_core
    except Exception:  # noqa: BLE001 - no JIT core: only a prebuilt module counts
        aiter_jit_core = None
    if not getattr(aiter_jit_core, "ENABLE_CK", True):
        return False
    for name in ("aiter.jit.module_moe_sorting", "module_moe_sorting"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            pass
    ck_dir = getattr(aiter_jit_core, "CK_DIR", None)
    return bool(ck_dir) and os.path.isdir(ck_dir)


@functools.cache
def _has_flydsl_moe() -> bool:
    """``ATOM_USE_FLYDSL_MOE=1`` and FlyDSL's MoE GEMM kernels import (once)."""
    if not envs.ATOM_USE_FLYDSL_MOE:
        return False
    from atom.model_ops.flydsl_moe import flydsl_moe_available

    return flydsl_moe_available()


@functools.cache
def _log_moe_backend(method: str, backend: str, reason: str) -> None:
    """Each distinct choice is logged once, not once per layer."""
    logger.info("%s: MoE backend %s (%s)", method, backend, reason)


def fp8_moe_flydsl_unsupported(
    quant_type: QuantType, block_quant: bool, is_dynamic: bool
) -> str | None:
    """Why FlyDSL's FP8 MoE cannot serve this quantisation mode, or None."""
    if block_quant:
        return f"FlyDSL MoE has no block-scale GEMM ({quant_type})"
    if not is_dynamic:
        return "FlyDSL MoE quantises activations dynamically, not with static scales"
    return None


def select_fp8_moe_backend(method: str, flydsl_unsupported: str | None) -> str:
    """CK when AITER has it and ATOM_CK_FREE=0; else FlyDSL when enabled,
    importable and able to serve the quantisation mode; else Triton."""
    if not envs.ATOM_CK_FREE and _has_ck_moe_sorting():
        _log_moe_backend(method, MOE_BACKEND_CK, "CK MoE sorting available")
        return MOE_BACKEND_CK
    why_not_ck = (
        "ATOM_CK_FREE=1" if envs.ATOM_CK_FREE else "AITER has no CK MoE sorting"
    )
    if not envs.ATOM_USE_FLYDSL_MOE:
        why_not_flydsl = "ATOM_USE_FLYDSL_MOE=0"
    elif not _has_flydsl_moe():
        why_not_flydsl = "FlyDSL MoE kernels not importable"
    elif flydsl_unsupported is not None:
        why_not_flydsl = flydsl_unsupported
    else:
        _log_moe_backend(method, MOE_BACKEND_FLYDSL, why_not_ck)
        return MOE_BACKEND_FLYDSL
    _log_moe_backend(method, MOE_BACKEND_TRITON, f"{why_not_ck}; {why_not_flydsl}")
    return MOE_BACKEND_TRITON


def fp8_moe_fit_flydsl(method: str, backend: str, **problem) -> str:
    """Keep FlyDSL only when its GEMMs take the layer's shapes; else Triton."""
    if backend != MOE_BACKEND_FLYDSL:
        return backend
    from atom.model_ops.flydsl_moe import flydsl_fp8_moe_unsupported_reason

    reason = flydsl_fp8_moe_unsupported_reason(**problem)
    if reason is None:
        return backend
    _log_moe_backend(method, MOE_BACKEND_TRITON, f"FlyDSL MoE: {reason}")
    return MOE_BACKEND_TRITON


def fp8_moe_block_shape(quant_type: QuantType) -> tuple[int, int] | None:
    """The weight-scale block (rows, columns) of a block-quantised FP8 MoE."""
    if quant_type == QuantType.per_1x128:
        return (128, 128)
    if quant_type == QuantType.per_1x32:
        return (1, 32)
    return None


def _shuffle_for_flydsl(*weights: torch.nn.Parameter) -> None:
    """FlyDSL's MoE GEMMs read their (16, 16) pre-shuffled B layout."""
    from atom.model_ops.flydsl_moe import shuffle_weight_fp8

    for weight in weights:
        weight.data = shuffle_weight_fp8(weight.data)
        weight.is_shuffled = True


def _keep_row_major(*weights: torch.nn.Parameter) -> None:
    """The Triton pipeline reads standard row-major weights: nothing to do."""


def fp8_moe_weight_shuffle(backend: str) -> Callable[..., None]:
    """The load-time weight layout change each backend needs."""
    if backend == MOE_BACKEND_CK:
        return shuffle_weights
    if backend == MOE_BACKEND_FLYDSL:
        return _shuffle_for_flydsl
    return _keep_row_major


def _quant_fp8_per_tensor(
    x: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x / scale`` saturated to ``fp8_dtype``, in torch (no AITER kernel)."""
    fp8_max = torch.finfo(fp8_dtype).max
    q = (x.to(torch.float32) / scale).clamp(min=-fp8_max, max=fp8_max)
    return q.to(fp8_dtype), scale


def fp8_per_tensor_requant(fp8_dtype: torch.dtype):
    """The per-tensor requantisation of w1/w3 to one scale per expert, off CK
    (CK keeps AITER's ``get_hip_quant``)."""
    return functools.partial(_quant_fp8_per_tensor, fp8_dtype=fp8_dtype)


def _local_expert_ids(
    expert_mask: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert parallelism: global expert ids to this rank's local ones.

    ``expert_mask`` (AITER's convention) is 1 for the experts this rank holds.
    Entries of other ranks' experts get expert 0 and weight 0, so they add
    nothing; all on the device, without host synchronisation.
    """
    mask = expert_mask.to(device=topk_ids.device)
    local_index = torch.cumsum(mask, dim=0, dtype=torch.int32) - 1
    ids = topk_ids.long()
    keep = mask[ids] > 0
    local_ids = torch.where(keep, local_index[ids], 0).to(topk_ids.dtype)
    weights = torch.where(keep, topk_weights, 0).to(topk_weights.dtype)
    return weights, local_ids


def fp8_moe_apply_without_ck(
    backend: str,
    layer: torch.nn.Module,
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    expert_map: torch.Tensor | None,
    activation,
    apply_router_weight_on_input: bool,
    block_shape: tuple[int, int] | None,
    modular_kernel: bool,
) -> torch.Tensor:
    """FP8 MoE on the FlyDSL or the Triton backend, with the layer's weights,
    scales and the routing the CK path would get.

    FlyDSL quantises the activations dynamically per token; the Triton pipeline
    uses the checkpoint's static input scales when it has them (then no dynamic
    quantisation and no per-K-step scaling in GEMM2), else per token group.
    """
    if modular_kernel:
        raise NotImplementedError(
            f"MoE backend {backend}: mori all-to-all expert parallelism runs "
            "through AITER's CK fused MoE; use ATOM_CK_FREE=0 with a CK AITER"
        )
    name = getattr(activation, "name", activation)
    if str(name).lower() != "silu":
        raise NotImplementedError(
            f"MoE backend {backend} supports the SiLU activation only, not {name}"
        )
    if apply_router_weight_on_input:
        if topk_ids.shape[1] != 1:
            raise NotImplementedError(
                "apply_router_weight_on_input needs top_k == 1, "
                f"got {topk_ids.shape[1]}"
            )
        x = x * topk_weights.to(x.dtype)
        topk_weights = torch.ones_like(topk_weights)
    if expert_map is not None:
        topk_weights, topk_ids = _local_expert_ids(expert_map, topk_weights, topk_ids)
    if backend == MOE_BACKEND_FLYDSL:
        from atom.model_ops.flydsl_moe import flydsl_fp8_moe

        return flydsl_fp8_moe(
            x,
            layer.w13_weight,
            layer.w2_weight,
            topk_weights,
            topk_ids,
            w13_scale=layer.w13_weight_scale,
            w2_scale=layer.w2_weight_scale,
            activation="silu",
            weights_preshuffled=True,
        )
    from atom.model_ops.triton_moe import fused_moe_fp8

    return fused_moe_fp8(
        x,
        layer.w13_weight,
        layer.w2_weight,
        topk_weights,
        topk_ids,
        w13_scale=layer.w13_weight_scale,
        w2_scale=layer.w2_weight_scale,
        block_shape=block_shape,
        num_fused_shared_experts=getattr(layer, "num_fused_shared_experts", 0),
        # a checkpoint's static activation scales (None when quantised dynamically)
        a13_scale=getattr(layer, "w13_input_scale", None),
        a2_scale=getattr(layer, "w2_input_scale", None),
    )
