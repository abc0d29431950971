"""docker/Dockerfile: hadolint's rules for upstream's style, and triton_kernels
installed where the image builds Triton itself."""

from atom_ckfree.edits import InsertInstructions, Instruction, Obsolete, snippet
from atom_ckfree.edits.dockerfile import parse


def builds_no_triton(doc: str | None) -> bool:
    return doc is None or not any(
        Instruction("RUN", "/triton-test").matches(e) for e in parse(doc)
    )


EDITS = [
    InsertInstructions(
        "dockerfile.hadolint-upstream-style",
        before=Instruction("COMMENT", "Default base images"),
        code=snippet(__file__, "hadolint_upstream_style.Dockerfile"),
    ),
    Obsolete(
        InsertInstructions(
            "dockerfile.triton-kernels-wheel",
            after=Instruction("RUN", "pip --retries=10 --default-timeout=60 install ."),
            code=snippet(__file__, "triton_kernels_wheel.Dockerfile"),
        ),
        builds_no_triton,
        "upstream ab30a68 (2026-06-06) builds no Triton in the image (the ROCm "
        "PyTorch base image's Triton serves) and 2b8828c moved fused_moe_triton.py "
        "off triton_kernels",
    ),
]
