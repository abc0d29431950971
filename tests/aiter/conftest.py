"""AITER's own Triton kernels, loaded from its git source, for the ``aiter`` tests.

The source is ``ATOM_CKFREE_AITER`` (an AITER git directory, clone or URL) or the
tool's cache ``~/.cache/atom-ckfree/aiter.git`` (``atom_ckfree.aiter_source``;
``apply-patches checkout --aiter-upstream`` seeds it), else an installed ``amd-aiter``
wheel. Its Python, at the AITER commit that matches the ATOM pin, is extracted into
the ignored ``.aiter/`` folder and its Triton modules are imported through stub
packages ``aiter``, ``aiter.jit``, ``aiter.jit.utils``, ``aiter.ops`` and
``aiter.ops.triton`` whose ``__path__`` points there (AITER's own package
``__init__`` needs its compiled extensions and ROCm). Nothing of AITER is copied into
this repository. Without a source the tests skip, and say so.
"""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
import sys
import types
from unittest import mock

import numpy as np
import pytest
import torch

from atom_ckfree import aiter_source as aiter_source_module

# The kernels run under the Triton interpreter (unless told otherwise, as on a GPU); it
# must be on while they are built (at import) and while they run.
os.environ.setdefault("TRITON_INTERPRET", "1")

STUBS = ("aiter", "aiter.jit", "aiter.jit.utils", "aiter.ops", "aiter.ops.triton")


def aiter_source() -> pathlib.Path:
    """AITER's ``aiter`` package at the commit that matches the ATOM pin (extracted
    once, see ``atom_ckfree.aiter_source``). Skips, loudly, without an AITER source."""
    package, where = aiter_source_module.pinned_package()
    if package is None:
        pytest.skip(f"NO AITER SOURCE: the aiter tests are skipped: {where}")
    return package


@pytest.fixture(autouse=True, scope="session")
def _fp8_casts_rounded_like_a_gpu():
    """Triton 3.9's interpreter casts to FP8 without the rounding carry into the
    exponent (``interpreter.py``, ``_convert_float``: the rounded-up significand is
    OR-ed into the exponent field), so a value that rounds up to the next power of
    two comes out half of it: 3.99 -> 2.0 in e4m3fnuz, -1.9995 -> -1.0 in e4m3fn
    (168 and 102 of 4096 values in [-4, 4]). A GPU rounds to nearest even, as torch
    does: under the interpreter, the aiter tests cast to FP8 through torch."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from triton.runtime import interpreter

    wrong = interpreter._convert_float
    tl = interpreter.tl
    fp8 = {
        tl.float8e4nv: torch.float8_e4m3fn,
        tl.float8e4b8: torch.float8_e4m3fnuz,
        tl.float8e5: torch.float8_e5m2,
        tl.float8e5b16: torch.float8_e5m2fnuz,
    }
    wide = {tl.float32: torch.float32, tl.float16: torch.float16}
    truncate = interpreter._ir.ROUNDING_MODE.RTZ

    def convert(data, src, dst, rounding_mode):
        if dst not in fp8 or src not in wide or rounding_mode == truncate:
            return wrong(data, src, dst, rounding_mode)
        values = torch.from_numpy(np.ascontiguousarray(data)).view(wide[src])
        return values.to(fp8[dst]).view(torch.uint8).numpy()

    with mock.patch.object(interpreter, "_convert_float", convert):
        yield


# Launch options only AMD's backend takes (AITER passes them to every kernel).
AMD_ONLY = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")
ON_NVIDIA = torch.cuda.is_available() and torch.version.hip is None


@pytest.fixture(autouse=True, scope="session")
def _amd_launch_options_dropped_on_nvidia():
    """On an NVIDIA GPU AITER's kernels launch without the AMD-only options."""
    if not ON_NVIDIA or os.environ.get("TRITON_INTERPRET") == "1":
        yield
        return
    from triton.runtime.jit import JITFunction

    launch = JITFunction.run

    def run(self, *args, **kwargs):
        for name in AMD_ONLY:
            kwargs.pop(name, None)
        return launch(self, *args, **kwargs)

    with mock.patch.object(JITFunction, "run", run):
        yield


def adapt_to_this_machine(import_module) -> None:
    """AITER's Triton modules ask the GPU what it is: here the arch lookup answers
    gfx942 (AITER's MI300X configs and dtypes) and the CU count is a small machine's,
    for small interpreter grids. Patched in the defining modules before any wrapper
    imports the names."""
    arch = import_module("aiter.ops.triton.utils._triton.arch_info")
    arch.get_arch = lambda: "gfx942"
    import_module("aiter.ops.triton.utils.device_info").get_num_sms = lambda: 8
    if not torch.cuda.is_available():
        # the Gluon decode's partition count asks torch.cuda for the CU count
        gluon = import_module("aiter.ops.triton.gluon.pa_decode_gluon")
        gluon.get_recommended_splits = _small_machine(gluon.get_recommended_splits)


def _small_machine(func):
    """``func`` run with ``torch.cuda.get_device_properties`` answering 8 CUs."""
    props = types.SimpleNamespace(multi_processor_count=8)

    @functools.wraps(func)
    def run(*args, **kwargs):
        with mock.patch("torch.cuda.get_device_properties", return_value=props):
            return func(*args, **kwargs)

    return run


@pytest.fixture(scope="session")
def aiter_tree():
    """The ``aiter`` folder of the extracted AITER source."""
    return aiter_source()


@pytest.fixture(scope="module")
def aiter(aiter_tree):
    """The AITER source's Triton modules: ``aiter("aiter.ops.triton.x.y")``. The stub
    packages stay in ``sys.modules`` while a test module runs (AITER's wrappers
    import lazily); the previous ``aiter*`` entries (a fake AITER) come back after."""
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] == "aiter"}
    for name in saved:
        del sys.modules[name]
    for name in STUBS:
        stub = types.ModuleType(name)
        stub.__path__ = [str(aiter_tree.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = stub
    # AITER's torch_compile_guard registers each wrapped function as a torch custom op
    # (for torch.compile, which these tests do not use) under names that torch's
    # clean-up at interpreter exit cannot parse ("aiter::aiter::x": a traceback after
    # the test summary). The functions themselves run unchanged without it.
    guard = types.ModuleType("aiter.jit.utils.torch_guard")
    guard.torch_compile_guard = lambda *args, **kwargs: lambda func: func
    sys.modules[guard.__name__] = guard
    adapt_to_this_machine(importlib.import_module)
    yield importlib.import_module
    for name in [n for n in sys.modules if n.split(".")[0] == "aiter"]:
        del sys.modules[name]
    sys.modules.update(saved)


from .atom_layers import atom_on_aiter, layer_tree  # noqa: F401


def pytest_generate_tests(metafunc):
    """``device``: where a layer test runs. Under Triton's interpreter (the default
    here) on the CPU at small sizes; with ``TRITON_INTERPRET=0`` on a GPU with
    compiled kernels at model sizes, marked ``gpu``. The interpreter is one switch
    for the whole process (read when kernels are defined), so a run collects the
    one or the other and skips neither."""
    if "device" not in metafunc.fixturenames:
        return
    if os.environ.get("TRITON_INTERPRET") == "1":
        metafunc.parametrize("device", [pytest.param("cpu", id="cpu")])
    else:
        gpu = pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)
        metafunc.parametrize("device", [gpu])
