# SPDX-License-Identifier: MIT
"""A fake ``aiter`` for CPU tests: modules in ``sys.modules`` whose entry points
record every call (name, argument shapes and dtypes) in a trace and, where the
caller uses a result, compute a small reference result in torch.

    fake = fake_aiter.install(ck=True)   # ck=False: a CK-free AITER build
    ... import and run the ATOM module under test ...
    fake.names()                         # ["aiter.pa_fwd_asm", ...]
    fake.uninstall()

The entry points are listed in ``entries.ENTRIES`` (module -> names); adding an
entry point is adding a line there. ``entries.CK`` names the CK entry points
and ``entries.CK_MODULES`` its prebuilt CK modules: with ``ck=False``, as in a
CK-free AITER build, the entry points are still exported but fail when called, the
modules and the CK sources (``aiter.jit.core.CK_DIR``) are absent and
``aiter.jit.core.ENABLE_CK`` is False. ``entries.CK_MOE`` names the CK kernels of the MoE path
(``touched_ck_moe``). With ``values=True`` the trace keeps a checksum of each
tensor's values as well, for comparing two runs call by call.
"""

from __future__ import annotations

import enum
import importlib.machinery
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import entries


def checksum(tensor: torch.Tensor) -> float | int:
    """The sum of a tensor's values (1-byte floats as their bytes)."""
    data = tensor.detach()
    if not data.numel():
        return 0
    if data.is_floating_point() and data.element_size() == 1:
        data = data.view(torch.uint8)
    if data.dtype == torch.bool:
        return int(data.sum())
    return round(float(data.to(torch.float64).sum()), 3)


def describe(value: Any, values: bool = False) -> Any:
    """What a trace keeps of an argument: shape and dtype of tensors (and with
    ``values`` a checksum of their values), plain values."""
    if isinstance(value, torch.Tensor):
        kept = ("tensor", tuple(value.shape), str(value.dtype).replace("torch.", ""))
        return kept + (checksum(value),) if values else kept
    if isinstance(value, enum.Enum):
        return type(value).__name__, value.name
    if isinstance(value, (list, tuple)):
        return type(value).__name__, tuple(describe(v, values) for v in value)
    if isinstance(value, dict):
        return "dict", tuple(sorted((k, describe(v, values)) for k, v in value.items()))
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


class FakeAiter:
    def __init__(self, ck: bool = True, values: bool = False):
        self.ck = ck
        self.values = values
        self.trace: list[tuple[str, tuple, tuple]] = []
        self.modules: dict[str, types.ModuleType] = {}
        self._saved: dict[str, Any] = {}

    # -- the trace ---------------------------------------------------------
    def record(self, name: str, args: tuple, kwargs: dict) -> None:
        self.trace.append(
            (
                name,
                tuple(describe(a, self.values) for a in args),
                tuple(sorted((k, describe(v, self.values)) for k, v in kwargs.items())),
            )
        )

    def names(self) -> list[str]:
        return [name for name, _, _ in self.trace]

    def calls(self, name: str) -> list[tuple]:
        return [t for t in self.trace if t[0] == name or t[0].endswith("." + name)]

    def clear(self) -> None:
        self.trace.clear()

    def touched_ck(self) -> list[str]:
        return [n for n in self.names() if n in entries.CK]

    def touched_ck_moe(self) -> list[str]:
        return [n for n in self.names() if n in entries.CK_MOE]

    # -- sys.modules -------------------------------------------------------
    def _entry(self, qualname: str, impl: Callable | None) -> Callable:
        def entry(*args, **kwargs):
            self.record(qualname, args, kwargs)
            return impl(*args, **kwargs) if impl is not None else None

        entry.__name__ = qualname.rsplit(".", 1)[-1]
        entry.__qualname__ = qualname
        return entry

    def _module(self, name: str) -> types.ModuleType:
        if name not in self.modules:
            module = types.ModuleType(name)
            module.__path__ = []  # a package: submodules import
            module.__spec__ = importlib.machinery.ModuleSpec(
                name, None, is_package=True
            )  # importlib.util.find_spec finds it
            module.__fake_aiter__ = self
            self.modules[name] = module
            if "." in name:
                parent, _, child = name.rpartition(".")
                setattr(self._module(parent), child, module)
        return self.modules[name]

    def build(self) -> None:
        for module_name, names in entries.ENTRIES.items():
            if not self.ck and module_name in entries.CK_MODULES:
                continue
            module = self._module(module_name)
            for name, impl in names.items():
                qualname = f"{module_name}.{name}"
                if isinstance(impl, entries.Value):
                    setattr(module, name, impl.make(self))
                elif not self.ck and qualname in entries.CK:
                    setattr(module, name, self._entry(qualname, _ck_free(qualname)))
                else:
                    setattr(module, name, self._entry(qualname, impl))
        core = self.modules["aiter.jit.core"]
        # AITER reads ENABLE_CK from the environment at import (aiter/jit/core.py);
        # CK_DIR is its Composable Kernel source tree, which a CK-free build lacks.
        core.ENABLE_CK = self.ck
        core.CK_DIR = str(Path(__file__).parent) if self.ck else "/nonexistent/ck"
        # torch.ops.aiter.<op>: ATOM calls some kernels through torch.ops
        self.torch_ops = types.SimpleNamespace(
            **{
                name: self._entry(f"torch.ops.aiter.{name}", impl)
                for name, impl in entries.TORCH_OPS.items()
            }
        )

    def install(self) -> FakeAiter:
        """Put this fake's modules in ``sys.modules`` (again: the same objects).

        A fake AITER means no AMD GPU: the Triton kernels of the patched modules
        (ATOM's own, e.g. ``kv_cache_asm``) run under Triton's interpreter, which
        must be on when they are defined (at import)."""
        os.environ.setdefault("TRITON_INTERPRET", "1")
        if not self.modules:
            self.build()
        for name, module in self.modules.items():
            self._saved.setdefault(name, sys.modules.get(name))
            sys.modules[name] = module
        _install_torch_ops(self.torch_ops)
        return self

    def uninstall(self) -> None:
        for name, module in self._saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        self._saved.clear()
        _install_torch_ops(None)


class _OpsProxy:
    """``torch.ops`` with an ``aiter`` namespace that is ours while installed."""

    def __init__(self, real, ours):
        self._real, self.aiter = real, ours

    def __getattr__(self, name):
        return getattr(self._real, name)


_REAL_OPS = torch.ops


def _install_torch_ops(ours) -> None:
    torch.ops = _REAL_OPS if ours is None else _OpsProxy(_REAL_OPS, ours)


_current: FakeAiter | None = None


def _ck_free(qualname: str) -> Callable[..., Any]:
    """A CK entry point of a CK-free AITER: exported like any other, it fails when
    called, because its JIT module cannot be built without the CK sources."""

    def fail(*args, **kwargs):
        raise RuntimeError(f"[aiter] build of the CK module behind {qualname} failed")

    return fail


def install(ck: bool = True) -> FakeAiter:
    """Install a fresh fake (replacing one installed before) and return it."""
    global _current
    if _current is not None:
        _current.uninstall()
    _current = FakeAiter(ck=ck).install()
    return _current


def uninstall() -> None:
    global _current
    if _current is not None:
        _current.uninstall()
        _current = None


def current() -> FakeAiter | None:
    return _current
