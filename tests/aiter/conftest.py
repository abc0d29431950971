"""AITER's own Triton kernels, loaded from its git source, for the ``aiter`` tests.

The source is ``ATOM_CKFREE_AITER`` (an AITER git directory, clone or URL) or the
tool's cache ``~/.cache/atom-ckfree/aiter.git`` (``atom_ckfree.aiter_source``). Its
Python, at the AITER commit that matches the ATOM pin, is extracted into the ignored
``.aiter/`` folder and its Triton modules are imported through stub
packages ``aiter``, ``aiter.jit``, ``aiter.jit.utils``, ``aiter.ops`` and
``aiter.ops.triton`` whose ``__path__`` points there (AITER's own package
``__init__`` needs its compiled extensions and ROCm). Nothing of AITER is copied into
this repository. Without a source the tests skip, and say so.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys
import types

import pytest

from atom_ckfree import aiter_source as aiter_source_module
from atom_ckfree import project

# The kernels run under the Triton interpreter (unless told otherwise, as on a GPU); it
# must be on while they are built (at import) and while they run.
os.environ.setdefault("TRITON_INTERPRET", "1")

STUBS = ("aiter", "aiter.jit", "aiter.jit.utils", "aiter.ops", "aiter.ops.triton")


def aiter_source() -> pathlib.Path:
    """AITER's ``aiter`` package at the commit that matches the ATOM pin (extracted
    once, see ``atom_ckfree.aiter_source``). Skips, loudly, without an AITER source."""
    repo, where = aiter_source_module.aiter_git()
    if repo is None:
        pytest.skip(f"NO AITER SOURCE: the aiter tests are skipped: {where}")
    commit = aiter_source_module.pinned_commit(repo)
    if commit is None:
        pytest.skip(
            f"NO AITER SOURCE: {where} has no main commit before "
            f"{project.current().pin_date}"
        )
    return aiter_source_module.extract(repo, commit)


def adapt_to_this_machine(import_module) -> None:
    """AITER's Triton modules ask the GPU what it is: here the arch lookup answers
    gfx942 (AITER's MI300X configs and dtypes) and the CU count is a small machine's,
    for small interpreter grids. Patched in the defining modules before any wrapper
    imports the names."""
    arch = import_module("aiter.ops.triton.utils._triton.arch_info")
    arch.get_arch = lambda: "gfx942"
    import_module("aiter.ops.triton.utils.device_info").get_num_sms = lambda: 8


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
