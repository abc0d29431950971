# SPDX-License-Identifier: MIT
"""moe.py routes FP8 MoE to FlyDSL when ATOM_USE_FLYDSL_MOE=1, CK is not used and
FlyDSL's MoE kernels import (a fake ``kernels.moe_gemm_2stage`` here), for the
quantisation modes FlyDSL serves; else to Triton."""

import fake_aiter
import pytest
import torch
from fake_aiter.entries import QuantType
from fake_aiter.harness import fixed_routing, load_moe, make_moe_layer
from test_moe_cascade import make_method

FLYDSL = {"ATOM_CK_FREE": "1", "ATOM_USE_FLYDSL_MOE": "1"}


@pytest.fixture(autouse=True)
def _uninstall_fake():
    yield
    fake_aiter.uninstall()


@pytest.mark.parametrize(
    "cls, quant",
    [
        ("Fp8MoEMethod", QuantType.per_Tensor),
        ("CompressedTensorsFp8MoEMethod", QuantType.per_Tensor),
        ("CompressedTensorsFp8MoEMethod", QuantType.per_Token),
    ],
)
def test_flydsl_gets_its_preshuffled_weights(monkeypatch, cls, quant):
    moe, fake = load_moe(monkeypatch, ck=True, env=FLYDSL, flydsl=True)
    method = make_method(moe, cls, quant)
    assert method.moe_backend == "flydsl"
    layer = make_moe_layer(method)
    w2 = layer.w2_weight.detach().clone()
    method.process_weights_after_loading(layer)
    from atom.model_ops import flydsl_moe

    assert torch.equal(
        layer.w2_weight.view(torch.uint8),
        flydsl_moe.shuffle_weight_fp8(w2).view(torch.uint8),
    )
    assert layer.w2_weight.is_shuffled
    calls = []

    def flydsl_fp8_moe(x, *args, **kwargs):
        calls.append((args, kwargs))
        return torch.zeros_like(x)

    monkeypatch.setattr(flydsl_moe, "flydsl_fp8_moe", flydsl_fp8_moe)
    ids = torch.tensor([[0, 2], [1, 3]], dtype=torch.int32)
    fixed_routing(moe, monkeypatch, torch.full((2, 2), 0.5), ids)
    method.apply(layer, torch.zeros(2, 256, dtype=torch.bfloat16), None, 2, True)
    ((args, kwargs),) = calls
    assert args[0] is layer.w13_weight and args[1] is layer.w2_weight
    assert torch.equal(args[3], ids)
    assert kwargs["weights_preshuffled"] is True
    assert kwargs["w13_scale"] is layer.w13_weight_scale
    assert not fake.touched_ck_moe(), fake.names()


@pytest.mark.parametrize(
    "quant, dynamic", [(QuantType.per_1x128, True), (QuantType.per_Tensor, False)]
)
def test_modes_flydsl_lacks_go_to_triton(monkeypatch, quant, dynamic):
    moe, _ = load_moe(monkeypatch, ck=True, env=FLYDSL, flydsl=True)
    assert make_method(moe, "Fp8MoEMethod", quant, dynamic).moe_backend == "triton"


def test_shapes_flydsl_lacks_go_to_triton(monkeypatch):
    moe, _ = load_moe(monkeypatch, ck=True, env=FLYDSL, flydsl=True)
    method = make_method(moe, "Fp8MoEMethod")
    make_moe_layer(method, H=200)  # not a multiple of FlyDSL's tiles
    assert method.moe_backend == "triton"


def test_flydsl_not_importable_means_triton(monkeypatch):
    moe, _ = load_moe(monkeypatch, ck=True, env=FLYDSL, flydsl=False)
    from atom.model_ops import moe_cascade

    assert not moe_cascade._has_flydsl_moe()
    assert make_method(moe, "Fp8MoEMethod").moe_backend == "triton"


def test_flydsl_off_by_default(monkeypatch):
    moe, _ = load_moe(monkeypatch, ck=False, flydsl=True)
    assert make_method(moe, "Fp8MoEMethod").moe_backend == "triton"
