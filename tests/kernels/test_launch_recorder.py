"""launch_recorder: launches are recorded, not run, and deduplicated by what
decides the compiled code."""

from __future__ import annotations

import torch

try:  # tests/ is a package in this repository; also runnable as loose files
    from . import amd_builds
    from .launch_recorder import recording, unique
except ImportError:
    import amd_builds
    from launch_recorder import recording, unique


def test_distinct_constants_and_constant_ints_are_distinct_variants():
    kernel = amd_builds.pipeline_module()._topk_sum_kernel
    buf = torch.empty(64, 4096, dtype=torch.bfloat16, device="meta")
    out = torch.empty(8, 4096, dtype=torch.bfloat16, device="meta")

    def launch(k, cols, block):
        kernel[(8, 4)](buf, out, k, cols, C_P2=8, BLOCK=block, EXACT_ROUND=False)

    with recording("here") as got:
        launch(4096, 8, 1024)
        launch(7168, 8, 1024)  # another size: the same compiled kernel
        launch(4096, 8, 512)  # another tile: another kernel
        launch(4096, 1, 1024)  # an int equal to 1 becomes a constant
    assert len(got) == 4 and got[0].origin == "here"
    assert got[0].args["K"] == 4096 and got[0].options == {}
    kept = unique(got)
    assert [(v.args["K"], v.args["num_cols"], v.args["BLOCK"]) for v in kept] == [
        (4096, 8, 1024),
        (4096, 8, 512),
        (4096, 1, 1024),
    ]
