"""num_rejected is defined on the non-speculative path too."""

from atom_ckfree.edits import InsertStatements, if_test, stmt

EDITS = [
    InsertStatements(
        "scheduler.postprocess-num-rejected-default",
        scope="Scheduler.postprocess",
        before=if_test("is_deferred_out or self.use_spec"),
        code="num_rejected = 0",
        # upstream later gave the non-speculative branch its own `num_rejected = 0`
        present_if=stmt("num_rejected = 0"),
    ),
]
