"""CPU tests of benchmarks/promotion_probe.py: its GEMM under the Triton
interpreter, and how the probe reports a child that hangs or fails."""

from __future__ import annotations

import os
from pathlib import Path

# Read when @triton.jit runs (the probe's load) and again when the interpreter
# takes tensor descriptors, so it stays set, as in test_triton_moe.py.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from tests.tools import load_file

PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "promotion_probe.py"


@pytest.fixture(scope="module")
def probe():
    return load_file(PROBE, "promotion_probe_cpu")


@pytest.mark.parametrize("promote", [False, True], ids=["chained", "promoted"])
def test_gemm_matches_float64(probe, promote):
    # 3 programs over 2x2 tiles: one program runs two tiles; 2 K steps, so the
    # promoted variant uses two different scale columns per row.
    a, b, scale = probe.make_problem(256, promote, "cpu", seed=3)
    out = probe.gemm(a, b, scale, promote, ws=False, num_programs=3)
    per_k = scale.double().repeat_interleave(256 // scale.shape[1], dim=1)
    ref = (a.double() * per_k) @ b.double().T
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < 1e-2  # bf16 output rounding: ~4e-3


def test_make_problem_rejects_partial_tiles(probe):
    with pytest.raises(ValueError, match="multiple of 128"):
        probe.make_problem(200, True, "cpu")


def test_child_that_runs_too_long_is_reported_killed(probe):
    result = probe.run_in_child("chained", 128, timeout=0.2)
    assert result == {"status": "did not finish in 0.2 s (killed)"}


def test_child_that_fails_reports_why(probe):
    # No GPU here: the child's measure() fails; its error comes back as the status.
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the child would run")
    result = probe.run_in_child("chained", 128, timeout=300)
    assert result["status"].startswith("failed: ")
    assert "Error" in result["status"]


def test_table_shows_failures_and_ratios(probe):
    results = {
        "chained": {"status": "ok", "ms": 0.1, "tflops": 1300.0, "rel_err": 2e-3},
        "promoted": {"status": "ok", "ms": 0.16, "tflops": 832.0, "rel_err": 2e-3},
        "chained, warp-specialised": {"status": "did not finish in 30 s (killed)"},
    }
    table = probe.render("Some GPU", 4096, 1.3e15, results)
    assert "| promoted | ok | 0.1600 | 832 | 64 | 0.64x | 2.0e-03 |" in table
    assert "| chained, warp-specialised | did not finish in 30 s (killed) |" in table
    assert "Some GPU" in table and "1300 TFLOP/s" in table


def test_result_files_name_card_and_triton_version(probe):
    # Both versions' results sit side by side in benchmarks/results.
    stem = probe.result_stem("NVIDIA H100 80GB HBM3", "3.9.0")
    assert stem == "promotion_NVIDIA_H100_80GB_HBM3_triton-3.9.0"
