"""The ASM-layout KV cache writer compiles for gfx942 (MI300X), without a GPU.

Run as a script, this file compiles the kernel of overlay/atom/model_ops/kv_cache_asm.py
with Triton's AMD backend for ``GPUTarget("hip", "gfx942", 64)`` in every variant the
wrapper launches and prints ``{variant: null or the error}`` as JSON. The test runs it
in a process of its own: once the interpreter has run in a process, real compilation
there fails (see kernel_builds.py).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

KERNEL = (
    pathlib.Path(__file__).resolve().parents[2]
    / "overlay"
    / "atom"
    / "model_ops"
    / "kv_cache_asm.py"
)
FP8 = "fp8e4b8"  # float8_e4m3fnuz, gfx942's FP8
# variant: (cache element type, head size, QUANT, WRITE_SCALES, num_warps)
BUILDS = {
    "bf16-head128": ("bf16", 128, 0, False, 2),
    "bf16-head64": ("bf16", 64, 0, False, 1),
    "fp8-per-tensor-with-scales": (FP8, 128, 1, True, 2),
    "fp8-per-tensor": (FP8, 128, 1, False, 2),
    "fp8-per-token": (FP8, 128, 2, True, 2),
    "fp8-per-token-head80": (FP8, 80, 2, True, 2),
}


def build(kernel, cache_ty, head, quant, write_scales, num_warps):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    x = 16 // (2 if cache_ty == "bf16" else 1)
    constexprs = {
        "HEAD": head,
        "HEAD_P2": triton.next_power_of_2(head),
        "X": x,
        "QUANT": quant,
        "WRITE_SCALES": write_scales,
        "FP8_MAX": 240.0,
    }
    pointers = {
        "k_ptr": "*bf16",
        "v_ptr": "*bf16",
        "k_cache_ptr": f"*{cache_ty}",
        "v_cache_ptr": f"*{cache_ty}",
        "slot_ptr": "*i64",
    }
    signature = {
        name: (
            "constexpr"
            if name in constexprs
            else pointers.get(name, "*fp32" if name.endswith("_ptr") else "i32")
        )
        for name in kernel.arg_names
    }
    src = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()},
    )
    triton.compile(
        src, target=GPUTarget("hip", "gfx942", 64), options={"num_warps": num_warps}
    )


def main() -> int:
    import importlib.util

    os.environ["TRITON_INTERPRET"] = "0"
    spec = importlib.util.spec_from_file_location("kv_cache_asm_compiled", KERNEL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    errors = {}
    for variant, args in BUILDS.items():
        try:
            build(mod._reshape_and_cache_asm_kernel, *args)
            errors[variant] = None
        except Exception as exc:  # noqa: BLE001 - reported per variant
            errors[variant] = f"{type(exc).__name__}: {exc}"[-3000:]
    print(json.dumps(errors))
    return 0


@pytest.fixture(scope="module")
def build_errors(tmp_path_factory):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path_factory.mktemp("triton")))
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("variant", list(BUILDS))
def test_kernel_compiles_for_gfx942(build_errors, variant):
    assert build_errors[variant] is None, build_errors[variant]


if __name__ == "__main__":
    sys.exit(main())
