"""docker/Dockerfile: CK optional (ENABLE_CK, default 1 = as before), triton_kernels installed."""

from atom_ckfree.edits import (
    AddArg,
    InsertInstructions,
    Instruction,
    ReplaceInstruction,
)

EDITS = [
    InsertInstructions(
        "dockerfile.hadolint-upstream-style",
        before=Instruction("ARG", "BASE_IMAGE="),
        code="""
        # hadolint global ignore=DL3003,DL3008,DL3009,DL3013,DL3015,DL3027,DL3042,DL3059
        # These rules flag the build style this image has always had (cd inside RUN,
        # unpinned apt/pip tools, pip cache, separate RUN steps for readable build logs).
        # They are ignored here so that hadolint gates every other rule on this file.
        """,
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
        code="""
        RUN git clone $AITER_REPO /app/aiter-test && \\
            cd /app/aiter-test && \\
            pip install -r requirements.txt && \\
            git checkout $AITER_COMMIT && \\
            if [ "$ENABLE_CK" = "1" ]; then \\
                git submodule sync && git submodule update --init --recursive; \\
            fi && \\
            ENABLE_CK=$ENABLE_CK MAX_JOBS=$MAX_JOBS PREBUILD_KERNELS=$PREBUILD_KERNELS GPU_ARCHS=$GPU_ARCH_LIST python3 setup.py develop
        """,
    ),
    InsertInstructions(
        "dockerfile.triton-kernels-wheel",
        after=Instruction("RUN", "pip --retries=10 --default-timeout=60 install ."),
        code="""
        # triton_kernels (the MoE kernels of fused_moe_triton.py), built as a wheel from
        # the same Triton checkout so that its version matches Triton's.
        RUN pip wheel --no-deps --wheel-dir /app/wheels /triton-test/python/triton_kernels && \\
            pip install --no-deps /app/wheels/triton_kernels-*.whl
        RUN pip show triton_kernels || true
        """,
    ),
]
