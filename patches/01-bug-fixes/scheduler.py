"""num_rejected is defined on the non-speculative path too."""

from atom_ckfree.edits import InsertStatements, if_test

EDITS = [
    InsertStatements(
        "scheduler.postprocess-num-rejected-default",
        scope="Scheduler.postprocess",
        before=if_test("is_deferred_out or self.use_spec"),
        code="num_rejected = 0",
    ),
]
