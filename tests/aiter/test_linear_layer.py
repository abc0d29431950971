"""Series 1's ``MergedReplicatedLinear.weight_loader`` fix, run as the patched ATOM has it.

A merged layer (e.g. DeepSeek's fused ``q_a_proj``/``kv_a_proj``) holds its shards one
after another along the output dimension: output feature ``r`` of the fused weight is
row ``r`` of the weight and, for per-token (per output channel) and per-1x32 scales,
row ``r`` of ``weight_scale`` (``LinearBase`` allocates both with ``output_size``
rows). So shard ``i``'s rows belong at ``sum(output_sizes[:i])``, as many as
``output_sizes[i]``, for the weight and its scale alike.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytestmark = pytest.mark.aiter

OUTPUT_SIZES = [32, 48, 16]  # unequal, so that a wrong offset or size shows
INPUT_SIZE = 64


@pytest.mark.parametrize("quant", ["per_Token", "per_1x32"])
def test_merged_replicated_linear_loads_each_shard_where_the_fused_layer_reads_it(
    atom_on_aiter, monkeypatch, quant
):
    atom = atom_on_aiter(ck=True)
    # ATOM's real atom.config (its QuantizationConfig), not the attention tests' stub
    monkeypatch.delitem(sys.modules, "atom.config")
    linear = atom.module("atom.model_ops.linear")
    from aiter import QuantType

    from atom.config import QuantizationConfig

    cfg = QuantizationConfig(
        quant_type=QuantType[quant],
        quant_dtype=torch.float8_e4m3fn,
        is_dynamic=True,
    )
    layer = linear.MergedReplicatedLinear(INPUT_SIZE, OUTPUT_SIZES, quant_config=cfg)
    scale_cols = layer.weight_scale.shape[1:]
    # per output feature: its shard's mark 2**i (exact in FP8 and in E8M0 scales)
    marks = [2.0**i for i in range(len(OUTPUT_SIZES))]
    for i, size in enumerate(OUTPUT_SIZES):
        weight = torch.full((size, INPUT_SIZE), marks[i]).to(layer.weight.dtype)
        scale = torch.full((size, *scale_cols), marks[i]).to(layer.weight_scale.dtype)
        layer.weight_loader(layer.weight, weight, i)
        layer.weight_loader(layer.weight_scale, scale, i)

    expected = torch.cat([torch.full((n,), m) for n, m in zip(OUTPUT_SIZES, marks)])
    assert layer.weight.float()[:, 0].tolist() == expected.tolist()
    for col in range(scale_cols[0]):
        assert layer.weight_scale.float()[:, col].tolist() == expected.tolist(), col
