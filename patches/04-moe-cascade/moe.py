"""The FP8 MoE methods choose CK, FlyDSL or Triton once, at construction.

CK stays the backend whenever AITER has CK's MoE sorting and ``ATOM_CK_FREE`` is
off; then every kernel call is the one upstream makes. Otherwise FlyDSL's MoE
GEMMs (``ATOM_USE_FLYDSL_MOE=1``, kernels importable, quantisation mode
supported) or the portable Triton pipeline run, on weights in their own layout.

Upstream made the layer's quant config a frozen dataclass (3c8e474: attributes,
no ``.get``), split ``Fp8MoEMethod.process_weights_after_loading`` into one
``_process_{block,channel,tensor}_quant`` per mode (4a572c5), each shuffling the
weights itself, and added MXFP8 (``per_1x32``, 56613ac) on gate/up-interleaved
weights that only AITER's MoE reads: off CK it is refused at construction.
"""

from atom_ckfree.edits import (
    AddImport,
    FirstOf,
    InsertStatements,
    Obsolete,
    OnlyWhere,
    WrapInCondition,
    assign,
    found,
    if_test,
    missing,
    snippet,
    stmt,
)
from atom_ckfree.edits import (
    call as call_anchor,
)
from atom_ckfree.edits import (
    defn as defn_anchor,
)

# Both methods keep FlyDSL only when its GEMMs take the layer's shapes.
FIT_FLYDSL = snippet(__file__, "fit_flydsl.py")


def _dispatch(block_shape: str, modular: str) -> str:
    return f"""
        if self.moe_backend != MOE_BACKEND_CK:
            return fp8_moe_apply_without_ck(
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

# main's typed config: `self.quant_type = quant_config.quant_type`
TYPED_CONFIG = found(
    "Fp8MoEMethod.__init__", stmt("self.quant_type = quant_config.quant_type")
)
PER_MODE = ("_process_block_quant", "_process_channel_quant", "_process_tensor_quant")
NOT_YET = (
    "no such method here: upstream 4a572c5 (2026-03-10) split the weight processing"
)
MOVED = (
    "upstream 4a572c5 moved the shuffle_weights calls into "
    "Fp8MoEMethod._process_{block,channel,tensor}_quant"
)
SHUFFLE_PER_BACKEND = """
shuffle_weights = fp8_moe_weight_shuffle(self.moe_backend)  # per backend
"""


def weight_layout_in(method: str):
    """The shuffle each backend needs, in one of main's per-mode methods."""
    return Obsolete(
        InsertStatements(
            f"moe.fp8.weight-layout-per-backend.{method.strip('_')}",
            scope=f"Fp8MoEMethod.{method}",
            at="start",
            code=SHUFFLE_PER_BACKEND,
        ),
        missing("Fp8MoEMethod", defn_anchor(method)),
        NOT_YET,
    )


FP8_WEIGHT_DTYPES = (
    "w13.dtype in [torch.int8, torch.uint8, torch.float8_e4m3fnuz, torch.float8_e4m3fn]"
)

EDITS = [
    AddImport(
        "moe.import-cascade",
        "atom.model_ops.moe_cascade",
        (
            "MOE_BACKEND_CK",
            "fp8_moe_apply_without_ck",
            "fp8_moe_block_shape",
            "fp8_moe_fit_flydsl",
            "fp8_moe_flydsl_unsupported",
            "fp8_moe_weight_shuffle",
            "fp8_per_tensor_requant",
            "select_fp8_moe_backend",
        ),
    ),
    # --- CompressedTensorsFp8MoEMethod ---------------------------------------
    InsertStatements(
        "moe.compressed-tensors-fp8.choose-backend",
        scope="CompressedTensorsFp8MoEMethod.__init__",
        at="end",
        code=snippet(__file__, "choose_backend_compressed_tensors.py"),
    ),
    InsertStatements(
        "moe.compressed-tensors-fp8.flydsl-shapes",
        scope="CompressedTensorsFp8MoEMethod.create_weights",
        at="end",
        code=FIT_FLYDSL,
    ),
    WrapInCondition(
        "moe.compressed-tensors-fp8.ck-shuffle-for-ck-only",
        scope="CompressedTensorsFp8MoEMethod.process_weights_after_loading",
        anchor=if_test(FP8_WEIGHT_DTYPES),
        condition="self.moe_backend == MOE_BACKEND_CK",
        orelse="""
        fp8_moe_weight_shuffle(self.moe_backend)(w13, w2)  # FlyDSL's or none
        """,
    ),
    InsertStatements(
        "moe.compressed-tensors-fp8.dispatch",
        scope="CompressedTensorsFp8MoEMethod.apply",
        after=SELECT_EXPERTS,
        code=_dispatch(
            "fp8_moe_block_shape(self.quant_type) if self.block_quant else None",
            "self.fused_experts is not None",
        ),
    ),
    # --- Fp8MoEMethod ------------------------------------------------------
    FirstOf(
        "moe.fp8.choose-backend",
        OnlyWhere(
            InsertStatements(
                "moe.fp8.choose-backend",
                scope="Fp8MoEMethod.__init__",
                at="end",
                code=snippet(__file__, "choose_backend_fp8_typed.py"),
            ),
            TYPED_CONFIG,
            "the typed LayerQuantConfig (`self.quant_type = quant_config.quant_type`)",
        ),
        InsertStatements(
            "moe.fp8.choose-backend",
            scope="Fp8MoEMethod.__init__",
            at="end",
            code=snippet(__file__, "choose_backend_fp8.py"),
        ),
    ),
    InsertStatements(
        "moe.fp8.flydsl-shapes",
        scope="Fp8MoEMethod.create_weights",
        at="end",
        code=FIT_FLYDSL,
    ),
    Obsolete(
        InsertStatements(
            "moe.fp8.weight-layout-per-backend",
            scope="Fp8MoEMethod.process_weights_after_loading",
            at="start",
            code=SHUFFLE_PER_BACKEND,
        ),
        missing(
            "Fp8MoEMethod.process_weights_after_loading",
            call_anchor("shuffle_weights"),
        ),
        MOVED,
    ),
    *(weight_layout_in(method) for method in PER_MODE),
    FirstOf.each(
        ("_process_tensor_quant", "process_weights_after_loading"),
        lambda method: WrapInCondition(
            "moe.fp8.requant-without-aiter-off-ck",
            scope=f"Fp8MoEMethod.{method}",
            anchor=stmt("quant_func = get_hip_quant(self.quant_type)"),
            condition="self.moe_backend == MOE_BACKEND_CK",
            orelse="quant_func = fp8_per_tensor_requant(layer.w13_weight.dtype)",
        ),
    ),
    InsertStatements(
        "moe.fp8.dispatch",
        scope="Fp8MoEMethod.apply",
        after=SELECT_EXPERTS,
        code=_dispatch(
            "fp8_moe_block_shape(self.quant_type)",
            "self.fused_experts is not None"
            " and self.quant_type != QuantType.per_Tensor",
        ),
    ),
]
