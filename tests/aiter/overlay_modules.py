"""Load a file of the overlay by path, as a module of its own.

The overlay's modules live in ATOM's package tree once applied; the tests load them
from this repository instead. ``interpret`` decides whether their Triton kernels are
built for the interpreter: ``TRITON_INTERPRET`` is read when ``@triton.jit`` runs,
i.e. while the module loads.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_overlay(relpath: str, name: str, interpret: bool = True):
    """``overlay/<relpath>`` as module ``name`` (cached in ``sys.modules``)."""
    if name in sys.modules:
        return sys.modules[name]
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "overlay" / relpath)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
    return mod


def contracts():
    """The stand-ins: ``overlay/tests/fake_aiter/contracts.py``."""
    return load_overlay("tests/fake_aiter/contracts.py", "atom_ckfree_aiter_contracts")


def kv_cache_asm():
    """The ASM-layout cache writer, built for the Triton interpreter."""
    return load_overlay("atom/model_ops/kv_cache_asm.py", "atom_ckfree_kv_cache_asm")
