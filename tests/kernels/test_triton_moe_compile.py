"""The Triton MoE kernels compile for Hopper (sm_90), on a machine without a GPU.

The CPU tests run the kernels under the Triton interpreter, which accepts code the
compiler refuses (branches of a helper returning different types, a plain argument
used where a compile-time constant is needed). Here Triton's own toolchain builds
each kernel in the variants the pipeline launches (kernel_builds.py, in a process
of its own, with an empty Triton cache): a frontend or backend error fails the
test, nothing runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

try:  # tests/ is a package in this repository; also runnable as loose files
    from .kernel_builds import BUILDS
except ImportError:
    from kernel_builds import BUILDS

SCRIPT = pathlib.Path(__file__).with_name("kernel_builds.py")


@pytest.fixture(scope="module")
def build_errors(tmp_path_factory):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path_factory.mktemp("triton")))
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("variant", list(BUILDS))
def test_kernel_compiles_for_sm90(build_errors, variant):
    assert build_errors[variant] is None, build_errors[variant]
