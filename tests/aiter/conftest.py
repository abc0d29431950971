"""AITER's own Triton kernels, loaded from its git source, for the ``aiter`` tests.

The source is ``ATOM_CKFREE_AITER`` (an AITER git directory) or the tool's cache
``~/.cache/atom-ckfree/aiter.git``. Its Triton modules, at the AITER commit that
matches the ATOM pin, are extracted into a temporary folder and imported through stub
packages ``aiter``, ``aiter.jit``, ``aiter.jit.utils``, ``aiter.ops`` and
``aiter.ops.triton`` whose ``__path__`` points there (AITER's own package
``__init__`` needs its compiled extensions and ROCm). Nothing of AITER is copied into
this repository. Without a source the tests skip, and say so.
"""

from __future__ import annotations

import importlib
import io
import os
import pathlib
import subprocess
import sys
import tarfile
import types

import pytest

# The kernels run under the Triton interpreter (unless told otherwise, as on a GPU); it
# must be on while they are built (at import) and while they run.
os.environ.setdefault("TRITON_INTERPRET", "1")

# The last AITER main commit not newer than the ATOM pin 87460d31 (2026-02-24 03:07
# UTC): "Add compiler configurations for bpreshuffle_cktile modules (#2069)".
AITER_COMMIT = "a2081d445a770fdabf3015a077f7b933571f02ab"
AITER_CACHE = pathlib.Path.home() / ".cache" / "atom-ckfree" / "aiter.git"
# What the tests import: AITER's Triton tree and two pure-Python helpers.
AITER_PATHS = (
    "aiter/ops/triton",
    "aiter/ops/shuffle.py",
    "aiter/jit/utils/torch_guard.py",
)
STUBS = ("aiter", "aiter.jit", "aiter.jit.utils", "aiter.ops", "aiter.ops.triton")

NO_AITER = (
    "NO AITER SOURCE: the aiter tests are skipped. Set ATOM_CKFREE_AITER to an AITER "
    "git directory, or seed the cache: git clone --bare https://github.com/ROCm/aiter "
    f"{AITER_CACHE}"
)


def aiter_source(dest: pathlib.Path) -> pathlib.Path:
    """Extract AITER's Triton modules at AITER_COMMIT into ``dest``; returns the
    ``aiter`` folder there. Skips (loudly) when there is no AITER git source."""
    git_dir = os.environ.get("ATOM_CKFREE_AITER") or str(AITER_CACHE)
    if not pathlib.Path(git_dir).exists():
        pytest.skip(f"{NO_AITER} ({git_dir} does not exist)")
    archive = subprocess.run(
        ["git", "--git-dir", git_dir, "archive", AITER_COMMIT, *AITER_PATHS],
        capture_output=True,
    )
    if archive.returncode:
        why = archive.stderr.decode(errors="replace").strip().splitlines() or ["?"]
        pytest.skip(f"{NO_AITER} ({git_dir} has no {AITER_COMMIT[:12]}: {why[-1]})")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "aiter"


@pytest.fixture(scope="session")
def aiter_tree(tmp_path_factory):
    """The ``aiter`` folder of the extracted AITER source (once per session)."""
    return aiter_source(tmp_path_factory.mktemp("aiter-src"))


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
    # No GPU to ask: the arch lookup answers gfx942 (AITER's MI300X configs and dtypes)
    # and the CU count is a small machine's, for small interpreter grids. Patched in
    # the defining modules before any wrapper imports the names.
    arch = importlib.import_module("aiter.ops.triton.utils._triton.arch_info")
    arch.get_arch = lambda: "gfx942"
    importlib.import_module("aiter.ops.triton.utils.device_info").get_num_sms = (
        lambda: 8
    )
    yield importlib.import_module
    for name in [n for n in sys.modules if n.split(".")[0] == "aiter"]:
        del sys.modules[name]
    sys.modules.update(saved)
