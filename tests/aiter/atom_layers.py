"""Patched ATOM layers on AITER's real Triton kernels, for the layer tests.

``atom_on_aiter(ck=..., env=...)`` loads ATOM's modules from the pin with all seven
series applied, under an ``aiter`` that is the fake of ``overlay/tests/fake_aiter``
(its ASM, CK and HIP entry points are the stand-ins of ``contracts.py``: torch
implementations of their documented contracts) except for ``aiter.ops.triton`` and
``aiter.ops.shuffle``, which are AITER's own, from the source of conftest.py. So a
layer runs AITER's real Triton kernels wherever it calls one and the stand-ins'
real results everywhere else; the tests compare its output with plain torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from .conftest import ON_NVIDIA, adapt_to_this_machine

FAKE_DIR = Path(__file__).resolve().parents[2] / "overlay" / "tests"
if str(FAKE_DIR) not in sys.path:
    sys.path.insert(0, str(FAKE_DIR))

# ATOM's switches that pick a path; unset unless a test sets them.
SWITCHES = (
    "ATOM_CK_FREE",
    "AITER_FORCE_TRITON_ATTN",
    "ATOM_USE_TRITON_MLA_DECODE",
    "ATOM_USE_FLYDSL_MOE",
    "ATOM_USE_TRITON_MOE",
)
# AITER's own packages, imported from its source instead of the fake's.
REAL = {
    "aiter.ops.triton": ("ops", "triton", "__init__.py"),
    "aiter.ops.shuffle": ("ops", "shuffle.py"),
}
OWNED = ("aiter", "atom", "kernels")


@dataclass
class AtomOnAiter:
    fake: object  # the installed FakeAiter

    @staticmethod
    def module(name: str):
        """``atom.<...>`` from the patched tree, imported under this configuration."""
        return importlib.import_module(name)


def _load_real(name: str, aiter_tree: Path) -> None:
    path = aiter_tree.joinpath(*REAL[name])
    package = path.name == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if package else None
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)
    spec.loader.exec_module(module)


def _fp8_of_nvidia(fake) -> None:
    """AITER's FP8 type is the chip's (``aiter/utility/dtypes.py``): e4m3fnuz on
    gfx942, e4m3fn on gfx950; NVIDIA GPUs have only the latter, so the fake
    answers as AITER does on gfx950."""
    fp8 = torch.float8_e4m3fn
    dtypes = fake.modules["aiter.utility.dtypes"]
    dtypes.fp8 = fp8
    dtypes.d_dtypes = {**dtypes.d_dtypes, "fp8": fp8}
    fake.modules["aiter"].dtypes = dtypes


@pytest.fixture(scope="session")
def layer_tree(patched_tree_for) -> Path:
    """The pin with all seven series applied, once a session."""
    return patched_tree_for("all")


@pytest.fixture
def atom_on_aiter(layer_tree, aiter_tree, monkeypatch):
    """A factory: ``atom_on_aiter(ck=False, env={"ATOM_CK_FREE": "1"})`` ->
    ``AtomOnAiter``. Every call starts afresh (ATOM's once-only checks see its
    environment); the modules it replaced come back after the test."""
    import fake_aiter
    from fake_aiter import atom_stubs
    from fake_aiter.harness import register_custom_ops

    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in OWNED}
    finders = list(sys.meta_path)
    fakes = []

    def make(ck: bool = False, env: dict[str, str] | None = None) -> AtomOnAiter:
        for name in SWITCHES:
            monkeypatch.delenv(name, raising=False)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        for name in [n for n in sys.modules if n.split(".")[0] in OWNED]:
            del sys.modules[name]
        fake = fake_aiter.FakeAiter(ck=ck)
        fake.build()
        if ON_NVIDIA:
            _fp8_of_nvidia(fake)
        for name in [n for n in fake.modules if n.startswith(tuple(REAL))]:
            del fake.modules[name]
        fakes.append(fake.install())
        for name in REAL:
            _load_real(name, aiter_tree)
        adapt_to_this_machine(importlib.import_module)
        atom_stubs.prepare(layer_tree)
        # ATOM's own op registration (the MoE wrappers), recording into the fake's
        # torch.ops.aiter instead of torch's library
        sys.modules.pop("atom.utils.custom_register", None)
        importlib.import_module("atom.utils.custom_register")
        register_custom_ops(fake, monkeypatch)
        return AtomOnAiter(fake)

    yield make
    for fake in fakes:
        fake.uninstall()
    for name in [n for n in sys.modules if n.split(".")[0] in OWNED]:
        del sys.modules[name]
    sys.modules.update(saved)
    sys.meta_path[:] = finders  # AITER's Triton package adds an import hook
