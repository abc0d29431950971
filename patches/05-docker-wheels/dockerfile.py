"""docker/Dockerfile: CK optional (ENABLE_CK, default 1 = as before), triton_kernels installed."""

from atom_ckfree.edits import (
    AddArg,
    InsertInstructions,
    Instruction,
    ReplaceInstruction,
    snippet,
)

EDITS = [
    InsertInstructions(
        "dockerfile.hadolint-upstream-style",
        before=Instruction("ARG", "BASE_IMAGE="),
        code=snippet(__file__, "hadolint_upstream_style.Dockerfile"),
    ),
    AddArg(
        "dockerfile.arg-enable-ck",
        "ENABLE_CK",
        "1",
        after=Instruction("ARG", "MAX_JOBS"),
        comment="""
        # 1 (default): AITER with its Composable Kernel (CK) backend, as before.
        # 0: a CK-free AITER: the CK submodule is not fetched and no CK kernel is built.
        """,
    ),
    ReplaceInstruction(
        "dockerfile.aiter-ck-optional",
        anchor=Instruction("RUN", "git clone $AITER_REPO /app/aiter-test"),
        code=snippet(__file__, "aiter_ck_optional.Dockerfile"),
    ),
    InsertInstructions(
        "dockerfile.triton-kernels-wheel",
        after=Instruction("RUN", "pip --retries=10 --default-timeout=60 install ."),
        code=snippet(__file__, "triton_kernels_wheel.Dockerfile"),
    ),
]
