# SPDX-License-Identifier: MIT
"""FP8 MoE through the patched moe.py on the Triton backend, computed for real
(Triton interpreter on the CPU, tiny shapes), against a float64 reference built
from the dequantised weights, for ATOM's FP8 weight-scale layouts.

``TRITON_INTERPRET`` must be set before ``triton`` is first imported (its own
``@jit`` library functions are built then), and other tests of the session
import it earlier; so each case runs in a fresh interpreter.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_aiter.entries import QuantType
from fake_aiter.harness import fixed_routing, load_moe, make_moe_layer
from test_moe_cascade import make_method

E, H, N, M, TOP_K = 4, 128, 128, 3, 2

CASES = [
    # (method, quant type, scale layout after process_weights_after_loading)
    ("Fp8MoEMethod", QuantType.per_Tensor, ((E,), (E,))),
    ("CompressedTensorsFp8MoEMethod", QuantType.per_Token, ((E, 2 * N, 1), (E, H, 1))),
    ("Fp8MoEMethod", QuantType.per_1x128, ((E, 2, 1), (E, 1, 1))),
]


def dequant(w, scale):
    w = w.to(torch.float64)
    s = scale.to(torch.float64)
    if s.dim() == 1:
        return w * s[:, None, None]
    if s.shape[-1] == 1 and s.shape[1] == w.shape[1]:
        return w * s
    bn, bk = w.shape[1] // s.shape[1], w.shape[2] // s.shape[2]
    return w * s.repeat_interleave(bn, 1).repeat_interleave(bk, 2)


def reference(x, w13, s13, w2, s2, weights, ids):
    w13, w2 = dequant(w13, s13), dequant(w2, s2)
    x = x.to(torch.float64)
    out = torch.zeros(x.shape[0], H, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate_up = w13[e] @ x[t]
            h = torch.nn.functional.silu(gate_up[:N]) * gate_up[N:]
            out[t] += float(weights[t, j]) * (w2[e] @ h)
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_triton_backend_end_to_end(case):
    here = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(here), str(here.parent), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, __file__, str(case)],
        cwd=here.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CASE OK" in proc.stdout


def run_case(monkeypatch, cls, quant, shapes):
    moe, fake = load_moe(monkeypatch, ck=False, interpret=True)
    method = make_method(moe, cls, quant)
    assert method.moe_backend == "triton"
    layer = make_moe_layer(method, E=E, H=H, N=N)
    method.process_weights_after_loading(layer)
    assert tuple(layer.w13_weight_scale.shape) == shapes[0]
    assert tuple(layer.w2_weight_scale.shape) == shapes[1]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(M, H, generator=g).to(torch.bfloat16)
    weights = torch.tensor([[0.7, 0.3], [0.5, 0.5], [1.0, 0.0]])
    ids = torch.tensor([[0, 3], [3, 1], [2, 0]], dtype=torch.int32)
    fixed_routing(moe, monkeypatch, weights, ids)
    out = method.apply(layer, x, None, TOP_K, True)
    assert out.shape == (M, H) and out.dtype == torch.bfloat16
    ref = reference(
        x,
        layer.w13_weight,
        layer.w13_weight_scale,
        layer.w2_weight,
        layer.w2_weight_scale,
        weights,
        ids,
    )
    # FP8 activation quantisation (3 mantissa bits) dominates: a few percent.
    err = (out.to(torch.float64) - ref).norm() / ref.norm()
    assert err < 0.08, float(err)
    assert not fake.touched_ck_moe(), fake.names()


if __name__ == "__main__":
    # A fresh interpreter; atom/ resolves from the tree (see the test above).
    import types

    atom = types.ModuleType("atom")
    atom.__path__ = [str(Path(__file__).resolve().parents[1] / "atom")]
    sys.modules["atom"] = atom
    with pytest.MonkeyPatch.context() as mp:
        run_case(mp, *CASES[int(sys.argv[1])])
    print("CASE OK")
