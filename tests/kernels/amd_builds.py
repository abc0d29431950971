"""Offline builds for AMD Instinct GPUs (gfx942 = MI300X, gfx950 = MI355X).

What is built is what the host code selects: the Triton MoE pipeline
(``overlay/atom/model_ops/triton_moe.py``) runs on ``meta`` tensors at the
benchmark's model shapes and M = 1, 2, 4 ... 8192 as the chip (its device name,
arch and FP8 dtype), and every launch it makes is recorded (launch_recorder.py)
and compiled for the chip with kernel_builds.build(); likewise AITER's Triton
entry points (aiter_builds.py) with ATOM's arguments.

Run as a script (``python amd_builds.py gfx942 [--sm90]``): prints one JSON
list, a record per (variant, target) with its resources or its build error. It
runs in a process of its own, one per chip: the Triton interpreter, once used in
a process (the CPU tests), leaves ``triton.language`` patched and real
compilation there fails, and AITER's modules read the architecture once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import sys
import time
from typing import NamedTuple

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))  # its siblings, also when imported by the tests


class Chip(NamedTuple):
    target: tuple  # GPUTarget arguments
    device_name: str  # torch.cuda.get_device_name() on that card
    fp8: str  # torch dtype name of the chip's native FP8
    lds_bytes: int  # LDS per workgroup (CU)


CHIPS = {
    "gfx942": Chip(
        ("hip", "gfx942", 64), "AMD Instinct MI300X", "float8_e4m3fnuz", 64 << 10
    ),
    "gfx950": Chip(
        ("hip", "gfx950", 64), "AMD Instinct MI355X", "float8_e4m3fn", 160 << 10
    ),
}
# Occupancy from registers on CDNA3/CDNA4 (gfx90a and later): one unified file
# of 512 VGPRs per SIMD lane holds the arch VGPRs and the accumulation VGPRs
# (AGPRs) of all waves on the SIMD. A wave takes align(VGPRs, 4) + AGPRs
# (LLVM, AMDGPU::getTotalNumVGPRs for GFX90A), allocated in granules of 8, and a
# SIMD holds at most 8 waves (LLVM, IsaInfo::getMaxWavesPerEU for GFX90A+).
VGPRS_PER_SIMD = 512
VGPR_GRANULE = 8
MAX_WAVES_PER_SIMD = 8

# Kernels that must not spill or use scratch (GEMMs and quantisation).
NO_SPILL = {"_moe_gemm1_kernel", "_moe_gemm2_kernel", "_group_quant_kernel"}


def waves_per_simd(vgpr: int, agpr: int) -> int:
    """Waves a SIMD holds at this register use:
    min(8, 512 // roundup(roundup(VGPRs, 4) + AGPRs, 8))."""
    total = -(-vgpr // 4) * 4 + agpr
    used = -(-max(total, 1) // VGPR_GRANULE) * VGPR_GRANULE
    return min(MAX_WAVES_PER_SIMD, VGPRS_PER_SIMD // used)


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def pipeline_module():
    """triton_moe.py, built for real compilation (not the interpreter)."""
    from moe_reference import load_triton_moe

    return load_triton_moe("atom_ckfree_triton_moe_compiled", interpret=False)


@contextlib.contextmanager
def as_chip(tm, chip_name: str):
    """The pipeline sees ``chip_name``'s device class (its config files are keyed by
    its name, its limits by its arch); on ``meta`` tensors everything else
    device-dependent answers as for a device with a native FP8 dot and no
    tensor-memory accelerator (the answers on ROCm)."""
    real = tm.device_info
    tm.device_info = lambda device: tm.known_device(chip_name)
    try:
        yield
    finally:
        tm.device_info = real


# Every power of two from 1 to 8192 tokens: the benchmark's M values and the
# steps between them (the heuristic's thresholds fall between them; 3 * 2**i
# added no variant on either chip).
MOE_TOKENS = [2**i for i in range(14)]


def moe_problems():
    """(label, E, top_k, K, N, mode, M) over the benchmark's model shapes."""
    bench = _load("atom_ckfree_moe_bench", ROOT / "benchmarks" / "moe_bench.py")
    for name, (E, top_k, K, N, mode) in bench.SHAPES.items():
        for M in MOE_TOKENS:
            yield f"{name} M={M}", E, top_k, K, N, mode, M


def moe_launches(chip_name: str) -> list:
    """Every distinct launch of the MoE pipeline on ``chip_name`` over
    moe_problems(), as the pipeline's own selection makes them."""
    import torch
    from launch_recorder import recording, unique

    tm = pipeline_module()
    chip = CHIPS[chip_name]
    fp8 = getattr(torch, chip.fp8)
    meta = torch.device("meta")
    launches = []
    with as_chip(tm, chip_name):
        for label, E, top_k, K, N, mode, M in moe_problems():
            block = mode == "block"
            if block:
                s13 = torch.empty(E, -(-2 * N // 128), -(-K // 128), device=meta)
                s2 = torch.empty(E, -(-K // 128), -(-N // 128), device=meta)
            else:
                s13 = s2 = torch.empty(E, device=meta)
            with recording(label) as got:
                tm.fused_moe_fp8(
                    torch.empty(M, K, dtype=torch.bfloat16, device=meta),
                    torch.empty(E, 2 * N, K, dtype=fp8, device=meta),
                    torch.empty(E, K, N, dtype=fp8, device=meta),
                    torch.empty(M, top_k, device=meta),
                    torch.empty(M, top_k, dtype=torch.int32, device=meta),
                    w13_scale=s13,
                    w2_scale=s2,
                    block_shape=(128, 128) if block else None,
                )
            launches += got
    return unique(launches)


def describe(launch) -> str:
    """A short name of a variant: the kernel, its compile-time constants other
    than the FP8 constants, and its launch options."""
    skip = {"FP8_MAX", "FP8_TINY", "EXACT_ROUND", "UPCAST"}
    consts = [
        f"{name}={_short(value)}"
        for param, (name, value) in zip(launch.kernel.params, launch.args.items())
        if param.is_constexpr and name not in skip
    ]
    opts = [f"{k}={v}" for k, v in sorted(launch.options.items())]
    ones = [
        name
        for param, (name, v) in zip(launch.kernel.params, launch.args.items())
        if not param.is_constexpr and type(v) is int and v == 1
    ]
    ones = f"{{{','.join(ones)}=1}}" if ones else ""
    return f"{launch.name}[{','.join(consts)}]({','.join(opts)}){ones}"


def _short(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value).replace(" ", "")


def build_record(launch, target, variant: str, chip: str, group: str) -> dict:
    """Build ``launch`` for ``target``: its resources, or its error."""
    from kernel_builds import build, resources
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    rec = {"group": group, "variant": variant, "chip": chip, "kernel": launch.name}
    rec["origin"] = launch.origin
    begin = time.perf_counter()
    try:
        backend = make_backend(GPUTarget(*target))
        options = launch.options
        if target[0] != "hip":  # AMD-only launch options
            options = {
                k: v for k, v in options.items() if k in ("num_warps", "num_stages")
            }
        rec["resources"] = resources(
            build(launch.source(backend), target, options), target
        )
        rec["error"] = None
    except Exception as exc:  # noqa: BLE001 - reported per variant
        rec["resources"] = None
        rec["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
    rec["seconds"] = round(time.perf_counter() - begin, 2)
    return rec


def chip_records(chip_name: str, sm90: bool = False) -> list[dict]:
    """Build every variant for ``chip_name``: the MoE pipeline's launches (and,
    with ``sm90`` on a chip of sm_90's FP8 type, the same launches for sm_90
    beside them), then the launches
    of AITER's entry points per case (a record with ``error`` "no AITER source:
    ..." when there is none)."""
    import torch
    from aiter_builds import aiter_launches
    from kernel_builds import SM90

    chip = CHIPS[chip_name]
    records = []
    for launch in moe_launches(chip_name):
        variant = describe(launch)
        records.append(build_record(launch, chip.target, variant, chip_name, "moe"))
        if sm90 and chip.fp8 == "float8_e4m3fn":  # sm_90's FP8 is e4m3fn too
            records.append(build_record(launch, SM90, variant, "sm_90", "moe"))
    from triton.backends.compiler import GPUTarget

    fp8 = getattr(torch, chip.fp8)
    cases, where = aiter_launches(chip_name, GPUTarget(*chip.target), fp8)
    if not cases:
        records.append(_failed("aiter", "", chip_name, "", where))
    for case, launches in cases.items():
        if isinstance(launches, str):  # AITER's host code raised
            records.append(_failed("aiter", case, chip_name, case, launches))
            continue
        for launch in launches:
            rec = build_record(
                launch, chip.target, describe(launch), chip_name, "aiter"
            )
            records.append(dict(rec, case=case, source=where))
    return records


def _failed(group, variant, chip, case, error) -> dict:
    return {
        "group": group,
        "variant": variant,
        "chip": chip,
        "kernel": "",
        "origin": case,
        "case": case,
        "resources": None,
        "error": error,
        "seconds": 0.0,
    }


def main(argv: list[str]) -> int:
    """``amd_builds.py CHIP [--sm90]``: the records of chip_records() as JSON."""
    os.environ["TRITON_INTERPRET"] = "0"
    (chip_name,) = [a for a in argv if not a.startswith("--")]
    print(json.dumps(chip_records(chip_name, "--sm90" in argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
