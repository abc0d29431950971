"""ATOM's scheduler tests pass the num_rejected that ScheduledBatchOutput requires."""

from atom_ckfree.edits import ReplaceArgument, call

EDITS = [
    ReplaceArgument(
        f"test-scheduler.{scope.split('.')[-1]}-num-rejected",
        scope=scope,
        anchor=call("ScheduledBatchOutput"),
        keyword="num_rejected",
        value="None",
    )
    for scope in ("TestPostprocess._output", "TestPostprocess.test_stop_token_ids")
]
