"""The AMD build table: ``python benchmarks/amd_builds.py`` rewrites
``benchmarks/results/amd_builds.md``.

Builds what tests/kernels/amd_builds.py builds (the MoE pipeline's selected
variants and AITER's kernels with ATOM's arguments) for gfx942 and gfx950, one
process per chip, both at once, each with an empty Triton cache; the gfx950
MoE launches (e4m3fn, as on sm_90) are built for sm_90 too, beside them. No GPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "kernels" / "amd_builds.py"
OUT = ROOT / "benchmarks" / "results" / "amd_builds.md"
sys.path.insert(0, str(SCRIPT.parent))
import amd_builds


def build_all() -> tuple[dict, dict]:
    """({chip: records}, {chip: wall seconds})."""
    with tempfile.TemporaryDirectory() as tmp:
        running = {}
        for chip in amd_builds.CHIPS:
            env = dict(os.environ, TRITON_CACHE_DIR=str(pathlib.Path(tmp) / chip))
            args = [sys.executable, str(SCRIPT), chip, "--sm90"]
            running[chip] = (
                time.perf_counter(),
                subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True),
            )
        records, wall = {}, {}
        for chip, (begin, proc) in running.items():
            stdout, _ = proc.communicate()
            if proc.returncode:
                sys.exit(f"amd_builds.py {chip} failed (exit {proc.returncode})")
            records[chip] = json.loads(stdout.splitlines()[-1])
            wall[chip] = time.perf_counter() - begin
    return records, wall


def amd_cells(rec: dict) -> list[str]:
    res = rec["resources"]
    if res is None:
        return ["**does not build**"] + [""] * 6
    limit = amd_builds.CHIPS[rec["chip"]].lds_bytes
    lds = f"{res['lds']}" + (" **> limit**" if res["lds"] > limit else "")
    spills = f"{res['vgpr_spill']} / {res['sgpr_spill']}"
    if res["vgpr_spill"] or res["sgpr_spill"]:
        spills = f"**{spills}**"
    scratch = f"**{res['scratch']}**" if res["scratch"] else "0"
    waves = amd_builds.waves_per_simd(res["vgpr"], res["agpr"])
    return [lds, str(res["vgpr"]), str(res["agpr"]), str(res["sgpr"]), spills,
            scratch, str(waves)]  # fmt: skip


def sm90_cells(rec: dict | None) -> list[str]:
    if rec is None:
        return ["–", "–"]
    res = rec["resources"]
    if res is None:
        return ["**does not build**", ""]
    regs = f"{res['regs']}" + (f" (stack {res['stack']})" if res["stack"] else "")
    return [str(res["lds"]), regs]


def summary(records: dict) -> list[str]:
    """Per chip and group: variants, built, largest LDS, spilling, fewest waves."""
    lines = [
        (
            "| chip | kernels of | variants | built | largest LDS B (limit) | "
            "with spills or scratch | fewest waves/SIMD |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for chip, recs in records.items():
        for group in ("moe", "aiter"):
            mine = [r for r in recs if r["group"] == group and r["chip"] == chip]
            built = [r["resources"] for r in mine if r["resources"]]
            if not mine:
                continue
            spilling = sum(
                1 for r in built if r["vgpr_spill"] or r["sgpr_spill"] or r["scratch"]
            )
            lds = max((r["lds"] for r in built), default=0)
            waves = min(
                (amd_builds.waves_per_simd(r["vgpr"], r["agpr"]) for r in built),
                default=0,
            )
            limit = amd_builds.CHIPS[chip].lds_bytes
            lines.append(
                f"| {chip} | {group} | {len(mine)} | {len(built)} | {lds} ({limit}) "
                f"| {spilling} | {waves} |"
            )
    return lines


def error_line(rec: dict) -> str:
    return rec["error"].strip().splitlines()[-1][:200]


def render(records: dict, wall: dict) -> str:
    import triton

    head = ("| kernel | compile-time constants, launch options {ints = 1} | chip | "
            "first selected for | LDS B | VGPR | AGPR | SGPR | spills V / S | "
            "scratch B | waves/SIMD | sm_90 smem B | sm_90 regs |")  # fmt: skip
    aiter_src = next(
        (r.get("source") for rs in records.values() for r in rs if r.get("source")),
        None,
    )
    lines = [
        "# Offline builds for AMD Instinct: gfx942 (MI300X) and gfx950 (MI355X)",
        "",
        f"Triton {triton.__version__} (its wheel's AMD backend), no GPU. Regenerate: "
        "`python benchmarks/amd_builds.py` (builds in "
        + ", ".join(f"{c} {s:.0f} s" for c, s in wall.items())
        + " wall, both chips at once, empty Triton caches).",
        "",
        (
            "What is built is what the host code selects: the Triton MoE pipeline "
            "(`overlay/atom/model_ops/triton_moe.py`) at the model shapes of "
            "`benchmarks/moe_bench.py` and M = 1, 2, 4 ... 8192 as each chip (device name, arch, native FP8: "
            "e4m3fnuz on gfx942, e4m3fn on gfx950), every distinct launch once; and "
            "AITER's entry points with ATOM's arguments "
            f"({aiter_src or 'AITER source not found: not built'}). "
            "Limits: LDS 64 KiB (gfx942), 160 KiB (gfx950); no spills or scratch in "
            "the GEMM, quantisation and AITER kernels."
        ),
        "",
        (
            "LDS = `metadata.shared`; VGPR, AGPR, SGPR, spills and scratch "
            "(`.private_segment_fixed_size`) from the AMDGPU metadata of the AMDGCN "
            "text. waves/SIMD = min(8, 512 // roundup(roundup(VGPR, 4) + AGPR, 8)): "
            "CDNA3/CDNA4 share one file of 512 VGPRs per SIMD lane between the arch "
            "and accumulation VGPRs of all waves on a SIMD (LLVM "
            "`AMDGPU::getTotalNumVGPRs` for GFX90A+, allocation granule 8, at most 8 "
            "waves per SIMD: `IsaInfo::getMaxWavesPerEU`). sm_90: the same variant "
            "(same constants and options; e4m3fn) built for sm_90, shared memory = "
            "`metadata.shared`, registers (and stack bytes) from `cuobjdump "
            "--dump-resource-usage` of the cubin."
        ),
    ]
    lines += ["", "## Summary", "", *summary(records)]
    sm90 = {r["variant"]: r for r in records.get("gfx950", []) if r["chip"] == "sm_90"}
    for group, title in (("moe", "Triton MoE pipeline"), ("aiter", "AITER")):
        cols = head if group == "moe" else head.rsplit(" sm_90 smem B |", 1)[0]
        lines += ["", f"## {title}", "", cols, "|" + "---|" * (cols.count(" | ") + 1)]
        failures = []
        for chip, recs in records.items():
            for rec in recs:
                if rec["group"] != group or rec["chip"] == "sm_90":
                    continue
                if not rec["kernel"]:  # host code or AITER source failed
                    failures.append(f"- {chip}, {rec['origin']}: {error_line(rec)}")
                    continue
                if rec["error"]:
                    failures.append(
                        f"- {chip}, `{rec['kernel']}` ({rec['origin']}): "
                        f"{error_line(rec)}"
                    )
                cells = [f"`{rec['kernel']}`",
                         rec["variant"][len(rec["kernel"]):].replace("|", "\\|"),
                         chip, rec["origin"], *amd_cells(rec),
                         *(sm90_cells(sm90.get(rec["variant"])) if group == "moe" else [])]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
        if failures:
            lines += ["", "Did not build:", "", *failures]
    return "\n".join(lines) + "\n"


def main() -> int:
    records, wall = build_all()
    OUT.write_text(render(records, wall))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
