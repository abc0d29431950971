"""num_rejected is defined on the non-speculative path too."""

from atom_ckfree.edits import InsertStatements, Unless, found, if_test, stmt

EDITS = [
    Unless(
        InsertStatements(
            "scheduler.postprocess-num-rejected-default",
            scope="Scheduler.postprocess",
            before=if_test("is_deferred_out or self.use_spec"),
            code="num_rejected = 0",
        ),
        # upstream later gave the non-speculative branch its own `num_rejected = 0`
        found("Scheduler.postprocess", stmt("num_rejected = 0")),
    ),
]
