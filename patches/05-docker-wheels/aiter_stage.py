"""Where a Dockerfile builds AITER: CK optional (ENABLE_CK, default 1 = as before).

At the pin the Dockerfile has one stage; since upstream 393b62a (2026-03-20) AITER
builds in the stage named ``build_aiter`` (in ``docker/atom_release.dockerfile``
too, since efb469f), and the ARG must be declared there: an ARG in another stage
leaves ``$ENABLE_CK`` empty where setup.py reads it."""

from atom_ckfree.edits import (
    AddArg,
    FirstOf,
    Instruction,
    Obsolete,
    ReplaceInstruction,
    snippet,
)

COMMENT = snippet(__file__, "enable_ck_arg.txt")


def enable_ck(stage: int | str) -> AddArg:
    return AddArg(
        "dockerfile.arg-enable-ck",
        "ENABLE_CK",
        "1",
        after=Instruction("ARG", "MAX_JOBS"),
        stage=stage,
        comment=COMMENT,
    )


def not_yet(doc: str | None) -> bool:
    return doc is None


NOT_YET = "not in this tree: upstream efb469f (2026-07-22) added the file"

EDITS = [
    Obsolete(
        FirstOf("dockerfile.arg-enable-ck", enable_ck("build_aiter"), enable_ck(0)),
        not_yet,
        NOT_YET,
    ),
    Obsolete(
        FirstOf(
            "dockerfile.aiter-ck-optional",
            ReplaceInstruction(
                "dockerfile.aiter-ck-optional",
                anchor=Instruction(
                    "RUN", "git clone $AITER_REPO /app/aiter-test", stage="build_aiter"
                ),
                code=snippet(__file__, "aiter_ck_optional_stage.Dockerfile"),
            ),
            ReplaceInstruction(
                "dockerfile.aiter-ck-optional",
                anchor=Instruction("RUN", "git clone $AITER_REPO /app/aiter-test"),
                code=snippet(__file__, "aiter_ck_optional.Dockerfile"),
            ),
        ),
        not_yet,
        NOT_YET,
    ),
]
