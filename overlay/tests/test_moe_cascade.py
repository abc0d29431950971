# SPDX-License-Identifier: MIT
"""The FP8 MoE backend cascade of atom/model_ops/moe.py: CK -> FlyDSL -> Triton.

The patched module runs under the recording fake AITER (tests/fake_aiter/);
the tests read the backend each method chose and what apply() hands it.
"""

import logging

import fake_aiter
import pytest
import torch
from fake_aiter.entries import CK_MOE, ActivationType, QuantType
from fake_aiter.harness import fixed_routing, load_moe, make_moe_layer

METHODS = ("Fp8MoEMethod", "CompressedTensorsFp8MoEMethod")


@pytest.fixture(autouse=True)
def _uninstall_fake():
    yield
    fake_aiter.uninstall()


def make_method(moe, cls, quant=QuantType.per_Tensor, dynamic=True):
    from atom.config import QuantizationConfig

    cfg = QuantizationConfig(
        quant_type=quant, quant_dtype=torch.float8_e4m3fn, is_dynamic=dynamic
    )
    return getattr(moe, cls)(cfg, None)


def recorder(calls):
    def fused_moe_fp8(x, *args, **kwargs):
        calls.append((x, args, kwargs))
        return torch.zeros_like(x)

    return fused_moe_fp8


@pytest.mark.parametrize("cls", METHODS)
def test_ck_present_and_flag_off_keeps_ck(monkeypatch, cls):
    moe, fake = load_moe(monkeypatch, ck=True, env={"ATOM_USE_FLYDSL_MOE": "1"})
    method = make_method(moe, cls)
    assert method.moe_backend == "ck"
    layer = make_moe_layer(method)
    method.process_weights_after_loading(layer)
    assert "aiter.ops.shuffle.shuffle_weight" in fake.names()
    ids = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    fixed_routing(moe, monkeypatch, torch.full((2, 2), 0.5), ids)
    fake.clear()
    x = torch.zeros(2, 256, dtype=torch.bfloat16)
    if cls == "CompressedTensorsFp8MoEMethod":
        # its CK path is the ASM MoE, whose stand-in refuses the one scale per
        # expert this path passes (fake_aiter/contracts.py, asm_moe): reached
        with pytest.raises(ValueError, match="fc1_scale"):
            method.apply(layer, x, None, 2, True)
    else:
        method.apply(layer, x, None, 2, True)
    assert fake.touched_ck_moe(), fake.names()


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize(
    "ck, env",
    [(True, {"ATOM_CK_FREE": "1"}), (False, {})],
    ids=["flag-on", "ck-absent"],
)
def test_without_ck_triton_gets_row_major_weights(monkeypatch, cls, ck, env):
    moe, fake = load_moe(monkeypatch, ck=ck, env=env)
    method = make_method(moe, cls)
    assert method.moe_backend == "triton"
    layer = make_moe_layer(method)
    w2_before = layer.w2_weight.detach().view(torch.uint8).clone()
    method.process_weights_after_loading(layer)
    # No CK shuffle: Triton reads the row-major weights as loaded.
    assert not fake.touched_ck_moe(), fake.names()
    assert torch.equal(layer.w2_weight.view(torch.uint8), w2_before)
    assert not getattr(layer.w13_weight, "is_shuffled", False)

    from atom.model_ops import triton_moe

    calls = []
    monkeypatch.setattr(triton_moe, "fused_moe_fp8", recorder(calls))
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5], [1.0, 0.0]])
    ids = torch.tensor([[0, 3], [1, 2], [2, 0]], dtype=torch.int32)
    fixed_routing(moe, monkeypatch, weights, ids)
    x = torch.randn(3, 256).to(torch.bfloat16)
    out = method.apply(layer, x, None, 2, True)
    assert out.shape == x.shape and out.dtype == x.dtype
    ((got_x, args, kwargs),) = calls
    assert got_x is x
    assert args[0] is layer.w13_weight and args[1] is layer.w2_weight
    assert torch.equal(args[2], weights) and torch.equal(args[3], ids)
    assert kwargs["w13_scale"] is layer.w13_weight_scale
    assert kwargs["w2_scale"] is layer.w2_weight_scale
    assert kwargs["block_shape"] is None
    assert not fake.touched_ck_moe(), fake.names()


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_static_activation_scales_reach_the_triton_pipeline(monkeypatch, dynamic):
    moe, _ = load_moe(monkeypatch, ck=False)
    method = make_method(moe, "Fp8MoEMethod", dynamic=dynamic)
    layer = make_moe_layer(method)
    method.process_weights_after_loading(layer)

    from atom.model_ops import triton_moe

    calls = []
    monkeypatch.setattr(triton_moe, "fused_moe_fp8", recorder(calls))
    ids = torch.tensor([[0, 1]], dtype=torch.int32)
    fixed_routing(moe, monkeypatch, torch.tensor([[0.5, 0.5]]), ids)
    method.apply(layer, torch.zeros(1, 256, dtype=torch.bfloat16), None, 2, True)
    kwargs = calls[0][2]
    if dynamic:
        assert kwargs["a13_scale"] is None and kwargs["a2_scale"] is None
    else:
        assert kwargs["a13_scale"] is layer.w13_input_scale
        assert kwargs["a2_scale"] is layer.w2_input_scale
        assert layer.w13_input_scale is not None


def test_block_scales_pass_their_block_shape(monkeypatch):
    moe, fake = load_moe(monkeypatch, ck=False)
    method = make_method(moe, "Fp8MoEMethod", QuantType.per_1x128)
    layer = make_moe_layer(method)
    method.process_weights_after_loading(layer)
    assert tuple(layer.w13_weight_scale.shape) == (4, 2, 2)

    from atom.model_ops import triton_moe

    calls = []
    monkeypatch.setattr(triton_moe, "fused_moe_fp8", recorder(calls))
    ids = torch.tensor([[0, 1]], dtype=torch.int32)
    fixed_routing(moe, monkeypatch, torch.tensor([[0.5, 0.5]]), ids)
    method.apply(layer, torch.zeros(1, 256, dtype=torch.bfloat16), None, 2, True)
    assert calls[0][2]["block_shape"] == (128, 128)
    assert not fake.touched_ck_moe()


def test_per_tensor_requant_without_aiter(monkeypatch):
    """Off CK, w1/w3 are requantised to one scale per expert in torch."""
    moe, fake = load_moe(monkeypatch, ck=False)
    method = make_method(moe, "Fp8MoEMethod")
    layer = make_moe_layer(method)
    scales = layer.w13_weight_scale.detach().clone()  # [E, 2]
    w13 = layer.w13_weight.detach().to(torch.float32) * scales.repeat_interleave(
        128, dim=1
    ).unsqueeze(-1)
    method.process_weights_after_loading(layer)
    assert tuple(layer.w13_weight_scale.shape) == (4,)
    assert torch.equal(layer.w13_weight_scale, scales.max(dim=1).values)
    after = layer.w13_weight.to(torch.float32) * layer.w13_weight_scale[:, None, None]
    assert torch.allclose(after, w13, rtol=0.07, atol=1e-3)
    assert not fake.touched_ck_moe()


def test_expert_parallel_ids_become_local(monkeypatch):
    moe, _ = load_moe(monkeypatch, ck=False)
    method = make_method(moe, "Fp8MoEMethod")
    layer = make_moe_layer(method, E=2)
    method.process_weights_after_loading(layer)

    from atom.model_ops import triton_moe

    calls = []
    monkeypatch.setattr(triton_moe, "fused_moe_fp8", recorder(calls))
    # 4 global experts, this rank holds 1 and 3 (AITER's mask: + a last 0 slot).
    mask = torch.tensor([0, 1, 0, 1, 0], dtype=torch.int32)
    ids = torch.tensor([[1, 2], [3, 0]], dtype=torch.int32)
    fixed_routing(moe, monkeypatch, torch.tensor([[0.6, 0.4], [0.7, 0.3]]), ids)
    x = torch.zeros(2, 256, dtype=torch.bfloat16)
    method.apply(layer, x, None, 2, True, expert_map=mask)
    _, args, _ = calls[0]
    assert args[3].tolist() == [[0, 0], [1, 0]]
    assert torch.allclose(args[2], torch.tensor([[0.6, 0.0], [0.7, 0.0]]))


def test_unsupported_activation_is_a_clear_error(monkeypatch):
    moe, _ = load_moe(monkeypatch, ck=False)
    method = make_method(moe, "Fp8MoEMethod")
    layer = make_moe_layer(method)
    method.process_weights_after_loading(layer)
    fixed_routing(
        moe, monkeypatch, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int32)
    )
    with pytest.raises(NotImplementedError, match="SiLU"):
        method.apply(
            layer,
            torch.zeros(1, 256, dtype=torch.bfloat16),
            None,
            1,
            True,
            activation=ActivationType.Gelu,
        )


def test_detection_runs_once_and_the_choice_is_logged_once(monkeypatch, caplog):
    moe, _ = load_moe(monkeypatch, ck=False)
    from atom.model_ops import moe_cascade

    with caplog.at_level(logging.INFO, logger="atom"):
        for _ in range(3):
            assert make_method(moe, "Fp8MoEMethod").moe_backend == "triton"
    assert moe_cascade._has_ck_moe_sorting.cache_info().misses == 1
    assert moe_cascade._has_ck_moe_sorting.cache_info().hits >= 1
    chosen = [r for r in caplog.records if "MoE backend" in r.getMessage()]
    assert len(chosen) == 1
    assert "triton" in chosen[0].getMessage()


def test_ck_entry_points_listed_are_those_of_the_ck_path():
    assert "aiter.fused_moe.fused_moe" in CK_MOE


# -- atom/model_ops/moe_cascade.py on its own ---------------------------------


def load_cascade(monkeypatch, ck=True):
    _, fake = load_moe(monkeypatch, ck=ck)
    from atom.model_ops import moe_cascade

    return moe_cascade, fake


def test_block_shapes_of_the_block_quantised_modes(monkeypatch):
    cascade, _ = load_cascade(monkeypatch)
    assert cascade.fp8_moe_block_shape(QuantType.per_1x128) == (128, 128)
    assert cascade.fp8_moe_block_shape(QuantType.per_1x32) == (1, 32)
    assert cascade.fp8_moe_block_shape(QuantType.per_Tensor) is None


def test_off_ck_weights_keep_their_layout_and_requantise_in_torch(monkeypatch):
    cascade, fake = load_cascade(monkeypatch)
    assert cascade.fp8_moe_weight_shuffle("ck") is cascade.shuffle_weights
    w = torch.nn.Parameter(torch.randn(2, 4), requires_grad=False)
    before = w.detach().clone()
    cascade.fp8_moe_weight_shuffle("triton")(w)
    assert torch.equal(w, before) and not getattr(w, "is_shuffled", False)

    fp8 = torch.float8_e4m3fn
    quant = cascade.fp8_per_tensor_requant(fp8)
    q, scale = quant(torch.tensor([1.0, -2.0, 1e6]), torch.tensor(0.5))
    assert q.dtype == fp8 and scale == 0.5
    assert q.float().tolist() == [2.0, -4.0, torch.finfo(fp8).max]  # saturated
    assert fake.names() == []  # no AITER kernel off CK


def test_why_flydsl_cannot_serve_a_quantisation_mode(monkeypatch):
    cascade, _ = load_cascade(monkeypatch)
    assert cascade.fp8_moe_flydsl_unsupported(QuantType.per_Tensor, False, True) is None
    assert "block" in cascade.fp8_moe_flydsl_unsupported(
        QuantType.per_1x128, True, True
    )
    assert "static" in cascade.fp8_moe_flydsl_unsupported(
        QuantType.per_Tensor, False, False
    )


def test_mori_all_to_all_is_refused_off_ck(monkeypatch):
    cascade, _ = load_cascade(monkeypatch, ck=False)
    x = torch.zeros(1, 8)
    with pytest.raises(NotImplementedError, match="mori"):
        cascade.fp8_moe_apply_without_ck(
            "triton",
            torch.nn.Module(),
            x,
            torch.ones(1, 1),
            torch.zeros(1, 1, dtype=torch.int32),
            expert_map=None,
            activation="silu",
            apply_router_weight_on_input=False,
            block_shape=None,
            modular_kernel=True,
        )
