"""The FP8 MoE methods choose CK, FlyDSL or Triton once, at construction.

CK stays the backend whenever AITER has CK's MoE sorting and ``ATOM_CK_FREE`` is
off; then every kernel call is the one upstream makes. Otherwise FlyDSL's MoE
GEMMs (``ATOM_USE_FLYDSL_MOE=1``, kernels importable, quantisation mode
supported) or the portable Triton pipeline run, on weights in their own layout.
"""

from atom_ckfree.edits import (
    AddImport,
    InsertStatements,
    ReplaceStatement,
    WrapInCondition,
    assign,
    defn,
    if_test,
    stmt,
)

HELPERS = '''
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


def _fp8_moe_flydsl_unsupported(
    quant_type: QuantType, block_quant: bool, is_dynamic: bool
) -> str | None:
    """Why FlyDSL's FP8 MoE cannot serve this quantisation mode, or None."""
    if block_quant:
        return f"FlyDSL MoE has no block-scale GEMM ({quant_type})"
    if not is_dynamic:
        return "FlyDSL MoE quantises activations dynamically, not with static scales"
    return None


def _select_fp8_moe_backend(method: str, flydsl_unsupported: str | None) -> str:
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


def _fp8_moe_fit_flydsl(method: str, backend: str, **problem) -> str:
    """Keep FlyDSL only when its GEMMs take the layer's shapes; else Triton."""
    if backend != MOE_BACKEND_FLYDSL:
        return backend
    from atom.model_ops.flydsl_moe import flydsl_fp8_moe_unsupported_reason

    reason = flydsl_fp8_moe_unsupported_reason(**problem)
    if reason is None:
        return backend
    _log_moe_backend(method, MOE_BACKEND_TRITON, f"FlyDSL MoE: {reason}")
    return MOE_BACKEND_TRITON


def _fp8_moe_block_shape(quant_type: QuantType) -> tuple[int, int] | None:
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


def _fp8_moe_weight_shuffle(backend: str) -> Callable[..., None]:
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


def _fp8_moe_requant(backend: str, quant_type: QuantType, fp8_dtype: torch.dtype):
    """The per-tensor requantisation of w1/w3 to one scale per expert."""
    if backend == MOE_BACKEND_CK:
        return get_hip_quant(quant_type)
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


def _fp8_moe_apply_without_ck(
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

    Activations are quantised dynamically per token (group); static input
    scales of the checkpoint are not used by these backends.
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
    )
'''


def _fit_flydsl(fp8_dtype: str) -> str:
    return f"""
        self.moe_backend = _fp8_moe_fit_flydsl(
            type(self).__name__,
            self.moe_backend,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size_per_partition,
            num_experts=num_experts,
            w13_scale_shape=tuple(w13_weight_scale.shape),
            w2_scale_shape=tuple(w2_weight_scale.shape),
            fp8_dtype={fp8_dtype},
        )
        """


def _dispatch(block_shape: str, modular: str) -> str:
    return f"""
        if self.moe_backend != MOE_BACKEND_CK:
            return _fp8_moe_apply_without_ck(
                self.moe_backend,
                layer,
                x,
                topk_weights,
                topk_ids,
                expert_map=expert_map,
                activation=activation,
                apply_router_weight_on_input=apply_router_weight_on_input,
                block_shape={block_shape},
                modular_kernel={modular},
            )
        """


SELECT_EXPERTS = assign("topk_weights, topk_ids")

FP8_WEIGHT_DTYPES = (
    "w13.dtype in [torch.int8, torch.uint8, torch.float8_e4m3fnuz, torch.float8_e4m3fn]"
)

EDITS = [
    AddImport("moe.import-functools", "functools"),
    AddImport("moe.import-importlib-util", "importlib.util"),
    AddImport("moe.import-logging", "logging"),
    AddImport("moe.import-os", "os"),
    AddImport("moe.import-envs", "atom.utils", ("envs",)),
    InsertStatements(
        "moe.backend-detection-and-ck-free-paths",
        scope="",
        before=defn("CompressedTensorsFp8MoEMethod"),
        code=HELPERS,
    ),
    # --- CompressedTensorsFp8MoEMethod ---------------------------------------
    InsertStatements(
        "moe.compressed-tensors-fp8.choose-backend",
        scope="CompressedTensorsFp8MoEMethod.__init__",
        at="end",
        code="""
        self.moe_backend = _select_fp8_moe_backend(
            type(self).__name__,
            _fp8_moe_flydsl_unsupported(
                self.quant_type, self.block_quant, not self.static_input_scales
            ),
        )
        """,
    ),
    InsertStatements(
        "moe.compressed-tensors-fp8.flydsl-shapes",
        scope="CompressedTensorsFp8MoEMethod.create_weights",
        at="end",
        code=_fit_flydsl("self.quant_dtype"),
    ),
    WrapInCondition(
        "moe.compressed-tensors-fp8.ck-shuffle-for-ck-only",
        scope="CompressedTensorsFp8MoEMethod.process_weights_after_loading",
        anchor=if_test(FP8_WEIGHT_DTYPES),
        condition="self.moe_backend == MOE_BACKEND_CK",
        orelse="""
        _fp8_moe_weight_shuffle(self.moe_backend)(w13, w2)  # FlyDSL's or none
        """,
    ),
    InsertStatements(
        "moe.compressed-tensors-fp8.dispatch",
        scope="CompressedTensorsFp8MoEMethod.apply",
        after=SELECT_EXPERTS,
        code=_dispatch(
            "_fp8_moe_block_shape(self.quant_type) if self.block_quant else None",
            "self.fused_experts is not None",
        ),
    ),
    # --- Fp8MoEMethod ------------------------------------------------------
    InsertStatements(
        "moe.fp8.choose-backend",
        scope="Fp8MoEMethod.__init__",
        at="end",
        code="""
        self.moe_backend = _select_fp8_moe_backend(
            type(self).__name__,
            _fp8_moe_flydsl_unsupported(
                self.quant_type,
                self.block_quant,
                self.quant_config.get("is_dynamic", True),
            ),
        )
        """,
    ),
    InsertStatements(
        "moe.fp8.flydsl-shapes",
        scope="Fp8MoEMethod.create_weights",
        at="end",
        code=_fit_flydsl("self.quant_dtype"),
    ),
    InsertStatements(
        "moe.fp8.weight-layout-per-backend",
        scope="Fp8MoEMethod.process_weights_after_loading",
        at="start",
        code="""
        shuffle_weights = _fp8_moe_weight_shuffle(self.moe_backend)  # per backend
        """,
    ),
    ReplaceStatement(
        "moe.fp8.requant-without-aiter-off-ck",
        scope="Fp8MoEMethod.process_weights_after_loading",
        anchor=stmt("quant_func = get_hip_quant(self.quant_type)"),
        code="""
        quant_func = _fp8_moe_requant(
            self.moe_backend, self.quant_type, layer.w13_weight.dtype
        )
        """,
    ),
    InsertStatements(
        "moe.fp8.dispatch",
        scope="Fp8MoEMethod.apply",
        after=SELECT_EXPERTS,
        code=_dispatch(
            "_fp8_moe_block_shape(self.quant_type)",
            "self.fused_experts is not None"
            " and self.quant_type != QuantType.per_Tensor",
        ),
    ),
]
