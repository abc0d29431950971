"""The CK-free MLA prefill fallback and the prefill block table on a GPU,
against per-sequence references (run with ``-m gpu`` on a CUDA/ROCm machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tools import load_file

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "mla_prefill_bench.py"


@pytest.fixture(scope="module")
def patched_tree(patched_tree_for) -> Path:
    """The pin with series 1-3 applied (tests/conftest.py)."""
    return patched_tree_for("1-3")


@pytest.fixture(scope="module")
def bench():
    return load_file(BENCH, "mla_prefill_bench")


@pytest.fixture(scope="module")
def patched(bench, patched_tree):
    return bench.load_patched(patched_tree)


def test_mla_prefill_fallback_matches_loop(bench, patched):
    mla, _ = patched
    lens = bench.mixed_lengths(64)
    cu = torch.tensor(
        [0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda"
    )
    t = sum(lens)
    q, k = (
        torch.randn(t, 4, 192, device="cuda", dtype=torch.bfloat16) for _ in range(2)
    )
    v = torch.randn(t, 4, 128, device="cuda", dtype=torch.bfloat16)
    got = mla.varlen_causal_attention(q, k, v, cu, cu, max(lens), max(lens), 0.07)
    ref = bench.loop_attention(q.double(), k.double(), v.double(), cu, 0.07)
    torch.testing.assert_close(got.double(), ref, atol=2e-2, rtol=2e-2)


def test_prefill_block_table_matches_loop(bench, patched):
    _, mha = patched
    lens = bench.mixed_lengths(64)
    cu = torch.tensor(
        [0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda"
    )
    assert torch.equal(
        mha.prefill_block_table(cu, max(lens)), bench.loop_block_table(cu, max(lens))
    )
