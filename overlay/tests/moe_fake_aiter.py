# SPDX-License-Identifier: MIT
"""A recording fake of the ``aiter`` API that ``atom/model_ops/moe.py`` uses.

AITER needs a ROCm runtime, so the MoE tests run ATOM's MoE code against this
stand-in. Every ``aiter`` module is made on demand; any function that is not
given an implementation below records its call in ``calls`` and returns None.
The enums (``ActivationType``, ``QuantType``) and ``dtypes`` are real.

``ck`` switches CK on or off the way a CK-free AITER (``ENABLE_CK=0``) differs:
``aiter.jit.core.ENABLE_CK``, ``aiter.moe_sorting_fwd`` and the prebuilt JIT
module ``aiter.jit.module_moe_sorting``.

Usage::

    fake = FakeAiter(ck=True)
    fake.install(monkeypatch)    # or fake.install() outside pytest
    ...
    fake.calls                   # [("aiter.fused_moe.fused_moe", {...}), ...]
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any

import torch

# The CK and ASM kernels (and their weight layout) of the MoE path: none of
# these may run when a non-CK MoE backend is chosen.
CK_MOE_ENTRY_POINTS = (
    "aiter.fused_moe.fused_moe",
    "aiter.fused_moe_bf16_asm.asm_moe",
    "aiter.moe_sorting_fwd",
    "aiter.ops.shuffle.shuffle_weight",
    "aiter.get_hip_quant",
    "torch.ops.aiter.rocm_aiter_fused_moe",
)


class ActivationType(enum.Enum):
    No = -1
    Silu = 0
    Gelu = 1
    Swiglu = 2


class QuantType(enum.Enum):
    No = 0
    per_Tensor = 1
    per_Token = 2
    per_1x32 = 3
    per_1x128 = 4
    per_128x128 = 5


def _dtypes() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        fp8=torch.float8_e4m3fnuz,
        fp8_e8m0=torch.uint8,
        fp4x2=torch.uint8,
        i8=torch.int8,
        i32=torch.int32,
        fp16=torch.float16,
        bf16=torch.bfloat16,
        fp32=torch.float32,
        u8=torch.uint8,
    )


def summarize(value: Any) -> Any:
    """A comparable summary of a call argument (tensors by shape, dtype and a
    checksum of their values)."""
    if isinstance(value, torch.Tensor):
        data = value.detach()
        if data.is_floating_point() and data.element_size() == 1:
            data = data.view(torch.uint8)
        if data.numel() and data.dtype != torch.bool:
            checksum = round(float(data.to(torch.float64).sum()), 3)
        else:
            checksum = int(data.sum()) if data.numel() else 0
        return ("tensor", tuple(value.shape), str(value.dtype), checksum)
    if isinstance(value, enum.Enum):
        return (type(value).__name__, value.name)
    if isinstance(value, (list, tuple)):
        return tuple(summarize(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, summarize(v)) for k, v in value.items()))
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, torch.dtype):
        return str(value)
    return type(value).__name__


class _Group:
    world_size = 1
    rank_in_group = 0

    def all_reduce(self, x, **kwargs):
        return x


class FakeAiter:
    def __init__(self, ck: bool = True):
        self.ck = ck
        self.calls: list[tuple[str, Any]] = []
        self.modules: dict[str, types.ModuleType] = {}
        self.impls: dict[str, Callable] = self._implementations()

    # --- recording ----------------------------------------------------------
    def record(self, name: str, args: tuple, kwargs: dict) -> None:
        self.calls.append((name, summarize(args) + (summarize(kwargs),)))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def ck_calls(self) -> list[str]:
        return [n for n in self.names() if n in CK_MOE_ENTRY_POINTS]

    def _recording(self, name: str, impl: Callable | None = None) -> Callable:
        def fn(*args, **kwargs):
            self.record(name, args, kwargs)
            return impl(*args, **kwargs) if impl is not None else None

        fn.__name__ = name.rsplit(".", 1)[-1]
        fn.__qualname__ = fn.__name__
        return fn

    # --- what the MoE path needs to compute -----------------------------------
    def _implementations(self) -> dict[str, Callable]:
        def moe_out(hidden_states, *args, **kwargs):
            return torch.zeros_like(hidden_states)

        def shuffle_weight(x, layout=(16, 16), **kwargs):
            return x.clone()

        def per_tensor_quant(x, scale=None, quant_dtype=torch.float8_e4m3fnuz):
            fp8_max = torch.finfo(quant_dtype).max
            if scale is None:
                scale = x.abs().amax().to(torch.float32) / fp8_max
            q = (x.to(torch.float32) / scale).clamp(-fp8_max, fp8_max)
            return q.to(quant_dtype), scale

        def get_hip_quant(quant_type):
            return self._recording("aiter.per_tensor_quant_hip", per_tensor_quant)

        return {
            "aiter.fused_moe.fused_moe": moe_out,
            "aiter.fused_moe_bf16_asm.asm_moe": moe_out,
            "aiter.ops.shuffle.shuffle_weight": shuffle_weight,
            "aiter.get_hip_quant": get_hip_quant,
            "aiter.per_tensor_quant": per_tensor_quant,
            "aiter.moe_sorting_fwd": lambda *a, **k: None,
        }

    def _static(self, module: str) -> dict[str, Any]:
        """Attributes that are not recorded functions."""
        if module == "aiter":
            attrs = {
                "ActivationType": ActivationType,
                "QuantType": QuantType,
                "dtypes": _dtypes(),
            }
            return attrs
        if module == "aiter.jit.core":
            return {"ENABLE_CK": self.ck, "CK_DIR": None}
        if module == "aiter.jit.utils.torch_guard":
            return {"torch_compile_guard": lambda *a, **k: (lambda f: f)}
        if module == "aiter.jit.utils.chip_info":
            return {"get_gfx": lambda: "gfx942"}
        if module == "aiter.dist.parallel_state":
            return {
                name: (lambda *a, **k: _Group())
                for name in ("get_tp_group", "get_dp_group", "get_ep_group")
            }
        return {}

    # --- the modules --------------------------------------------------------
    def make_module(self, name: str) -> types.ModuleType:
        fake = self

        class _Module(types.ModuleType):
            def __getattr__(self, attr):
                if attr.startswith("__"):
                    raise AttributeError(attr)
                full = f"{name}.{attr}"
                value = fake._recording(full, fake.impls.get(full))
                setattr(self, attr, value)
                return value

        module = _Module(name)
        module.__path__ = []  # every fake module is a package
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        for attr, value in self._static(name).items():
            setattr(module, attr, value)
        if name == "aiter" and not self.ck:
            # Missing means: getattr(aiter, "moe_sorting_fwd", None) is None.
            module.moe_sorting_fwd = None
        self.modules[name] = module
        return module

    def provides(self, name: str) -> bool:
        if name == "aiter.jit.module_moe_sorting":
            return self.ck
        return name == "aiter" or name.startswith("aiter.")

    def install(self, monkeypatch=None) -> FakeAiter:
        """Put the fake in ``sys.modules`` (undone by ``monkeypatch``)."""
        finder = _Finder(self)
        for key in [k for k in sys.modules if k == "aiter" or k.startswith("aiter.")]:
            if monkeypatch is not None:
                monkeypatch.delitem(sys.modules, key)
            else:
                del sys.modules[key]
        if monkeypatch is not None:
            monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
        else:
            sys.meta_path.insert(0, finder)
        return self


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, fake: FakeAiter):
        self.fake = fake

    def find_spec(self, name, path=None, target=None):
        if not self.fake.provides(name):
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        return self.fake.make_module(spec.name)

    def exec_module(self, module):
        pass


def register_custom_ops(fake: FakeAiter, monkeypatch=None) -> None:
    """ATOM registers its MoE wrappers as ``torch.ops.aiter.*``; make
    ``direct_register_custom_op`` put a recording op there."""
    from atom.utils import custom_register

    def direct_register_custom_op(op_name, op_func, **kwargs):
        setattr(
            torch.ops.aiter,
            op_name,
            fake._recording(f"torch.ops.aiter.{op_name}", op_func),
        )

    if monkeypatch is not None:
        monkeypatch.setattr(
            custom_register, "direct_register_custom_op", direct_register_custom_op
        )
    else:
        custom_register.direct_register_custom_op = direct_register_custom_op


def install_fake_flydsl(monkeypatch) -> types.ModuleType:
    """An importable ``kernels.moe_gemm_2stage`` (FlyDSL's MoE GEMM builders)."""
    kernels = types.ModuleType("kernels")
    kernels.__path__ = []
    gemm = types.ModuleType("kernels.moe_gemm_2stage")
    gemm.compile_moe_gemm1 = gemm.compile_moe_gemm2 = lambda **kwargs: None
    monkeypatch.setitem(sys.modules, "kernels", kernels)
    monkeypatch.setitem(sys.modules, "kernels.moe_gemm_2stage", gemm)
    return gemm


def load_moe(monkeypatch, *, ck=True, env=None, flydsl=False, interpret=True):
    """A fresh ``atom.model_ops.moe`` under a fresh fake AITER.

    ATOM's tests/conftest.py stubs ``atom.config`` and ``atom.utils.custom_register``;
    the MoE module needs the real ones, so every ``atom.*`` module is imported
    anew here (``monkeypatch`` puts the previous ones back afterwards).
    ``interpret`` sets ``TRITON_INTERPRET`` for the Triton MoE kernels (read when
    they are imported); keep it on within one process: kernels built for the
    interpreter and for a GPU do not mix. Returns ``(moe, fake)``.
    """
    import importlib

    for name in ("ATOM_CK_FREE", "ATOM_USE_FLYDSL_MOE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
    fake = FakeAiter(ck=ck).install(monkeypatch)
    for name in [n for n in sys.modules if n.startswith(("atom.", "kernels"))]:
        monkeypatch.delitem(sys.modules, name)
    if flydsl:
        install_fake_flydsl(monkeypatch)
    importlib.import_module("atom.utils.custom_register")
    register_custom_ops(fake, monkeypatch)
    moe = importlib.import_module("atom.model_ops.moe")
    return moe, fake


def make_layer(method, E=4, H=256, N=128, seed=0):
    """A layer with the method's weights, filled with small random FP8 values
    and scales around 1 (an FP8 checkpoint as loaded)."""
    layer = torch.nn.Module()
    method.create_weights(layer, E, H, N, torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    layer.local_num_experts = E
    layer.intermediate_size_per_partition = N
    layer.num_fused_shared_experts = 0
    layer.routed_scaling_factor = 1.0
    fp8 = layer.w13_weight.dtype
    layer.w13_weight.data = (torch.randn(E, 2 * N, H, generator=g) * 0.5).to(fp8)
    layer.w2_weight.data = (torch.randn(E, H, N, generator=g) * 0.5).to(fp8)
    for name in ("w13_weight_scale", "w2_weight_scale"):
        param = getattr(layer, name)
        param.data = torch.rand(param.shape, generator=g) * 0.02 + 0.01
    return layer


def fixed_routing(moe, monkeypatch, weights, ids):
    """``FusedMoE.select_experts`` returns the given routing."""

    def route(*args, **kwargs):
        return weights, ids

    monkeypatch.setattr(moe.FusedMoE, "select_experts", staticmethod(route))
