"""What adding FP8 products in float32 per K step costs a Triton GEMM on this card,
and whether Triton's automatic warp specialisation runs such a GEMM (the ceiling
behind issue 5's "50 % of the FP8 peak at M = 8192" for the block-FP8 shapes).

    python benchmarks/promotion_probe.py [--size 4096] [--ws-timeout 30] [--json]

The block-FP8 MoE GEMMs scale each 128-deep K step's product (per row of x, per
weight block) and add it in float32: the tensor cores cannot apply the scales, and
sm_90 accumulates FP8 products with reduced precision. In Triton that is a fresh
dot per K step whose result the warps wait for before the multiply-add, so the
tensor cores idle meanwhile. This probe times one persistent GEMM (M = N = K =
``--size``, operands through TMA descriptors, 128x128x128 tiles) two ways:

* chained: the products accumulated in the tensor cores over all of K, one scale
  per row after the loop;
* promoted: a fresh product per K step, scaled per (row, K block), added in float32;

each plain and with ``tl.range(..., warp_specialize=True)``, Triton's automatic
warp specialisation (one TMA producer and two consumer warp groups, each taking
64 rows of the tile). Every variant runs in a child process killed after
``--ws-timeout`` seconds (a deadlocked kernel never returns) and is checked
against a float32 reference before it is timed. The operands fit in L2: this
measures the tensor-core side only. Writes
``benchmarks/results/promotion_<card>_triton-<version>.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from moe_bench import card_slug, measure_ceilings, rel_err

BLOCK = 128
TOL = 1e-2  # bf16 output rounding is ~4e-3
# name: (promoted per K step, warp-specialised)
VARIANTS = {
    "chained": (False, False),
    "promoted": (True, False),
    "chained, warp-specialised": (False, True),
    "promoted, warp-specialised": (True, True),
}


@triton.jit
def _probe_gemm_kernel(
    a_ptr,
    scale_ptr,
    b_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_sm,
    rows_per_tile,
    PROMOTE: tl.constexpr,
    WS: tl.constexpr,
    NUM_PROGRAMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # out = (a * scale) . b^T; scale [M, K / BLOCK_K] (PROMOTE) or [M, 1].
    # Descriptors made here, not on the host: the warp-specialisation pass splits
    # the A tile between its two consumers and must resize A's descriptor block.
    a_desc = tl.make_tensor_descriptor(
        a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K]
    )
    b_desc = tl.make_tensor_descriptor(
        b_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K]
    )
    num_pid_n = N // BLOCK_N
    num_tiles = (M // BLOCK_M) * num_pid_n
    for tile in tl.range(
        tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=False, warp_specialize=WS
    ):
        pid_m = tile // num_pid_n
        pid_n = tile % num_pid_n
        # rows_per_tile == BLOCK_M, but a runtime value: when the row base is the
        # same value as A's TMA coordinate (pid_m * BLOCK_M), Triton 3.9 shifts it
        # by 64 in the second consumer on top of the arange it already shifted,
        # and that consumer's scales and stores land 64 rows too low.
        offs_m = pid_m * rows_per_tile + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        scale_rows = scale_ptr + offs_m * stride_sm
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for kb in range(K // BLOCK_K):
            a = a_desc.load([pid_m * BLOCK_M, kb * BLOCK_K])
            b = b_desc.load([pid_n * BLOCK_N, kb * BLOCK_K])
            if PROMOTE:
                acc += tl.dot(a, b.T) * tl.load(scale_rows + kb)[:, None]
            else:
                acc = tl.dot(a, b.T, acc)
        if not PROMOTE:
            acc = acc * tl.load(scale_rows)[:, None]
        out = out_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty))


def make_problem(size: int, promote: bool, device: str, seed: int = 0):
    """FP8 a [size, size], b [size, size] (rows = output columns), fp32 scales."""
    if size % BLOCK:
        raise ValueError(f"--size must be a multiple of {BLOCK}, got {size}")
    g = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(size, size, generator=g, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(size, size, generator=g, device=device).to(torch.float8_e4m3fn)
    cols = size // BLOCK if promote else 1
    scale = torch.rand(size, cols, generator=g, device=device) + 0.5
    return a, b, scale


def reference(a, b, scale):
    """(a * scale) . b^T in float32, the scales spread over their K blocks."""
    per_k = scale.repeat_interleave(a.shape[1] // scale.shape[1], dim=1)
    return (a.float() * per_k) @ b.float().T


def gemm(a, b, scale, promote: bool, ws: bool, num_programs: int):
    """The probe GEMM, bf16 out; ``num_programs`` persistent programs."""
    size = a.shape[0]
    out = torch.empty(size, size, dtype=torch.bfloat16, device=a.device)
    tiles = (size // BLOCK) ** 2
    programs = min(num_programs, tiles)
    _probe_gemm_kernel[(programs,)](
        a,
        scale,
        b,
        out,
        size,
        size,
        size,
        scale.stride(0),
        BLOCK,
        PROMOTE=promote,
        WS=ws,
        NUM_PROGRAMS=programs,
        BLOCK_M=BLOCK,
        BLOCK_N=BLOCK,
        BLOCK_K=BLOCK,
        # Warp specialisation takes 4 warps per consumer group (12 in all).
        num_warps=4 if ws else 8,
        num_stages=4,
    )
    return out


def measure(name: str, size: int) -> dict:
    """Check, then time one variant on the GPU (median ms)."""
    promote, ws = VARIANTS[name]
    a, b, scale = make_problem(size, promote, "cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    # The in-kernel descriptors live in global scratch memory that Triton asks
    # for; set once here, not in the timed call.
    triton.set_allocator(
        lambda nbytes, _align, _stream: torch.empty(
            nbytes, dtype=torch.int8, device="cuda"
        )
    )

    def call():
        return gemm(a, b, scale, promote, ws, sms)

    err = rel_err(call(), reference(a, b, scale))
    if not err < TOL:
        return {"status": f"wrong result (rel err {err:.1e})", "rel_err": err}
    ms = triton.testing.do_bench(call, warmup=100, rep=500, return_mode="median")
    return {"status": "ok", "ms": ms, "tflops": 2 * size**3 / ms / 1e9, "rel_err": err}


def run_in_child(name: str, size: int, timeout: float) -> dict:
    """measure() in a child process: a kernel that deadlocks, or a compiler that
    asserts, takes the child down and not the probe."""
    cmd = [sys.executable, __file__, "--child", name, "--size", str(size)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"did not finish in {timeout:g} s (killed)"}
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
    # A compiler assertion names the failing pass better than the Python error.
    why = next((ln for ln in lines if "Assertion" in ln), lines[-1])
    return {"status": f"failed: {why.strip()[:200]}"}


def render(card: str, size: int, peak: float, results: dict) -> str:
    chained = results["chained"].get("tflops")
    lines = [
        f"# Per-K-step FP8 promotion in Triton: {card}",
        "",
        (
            f"torch {torch.__version__}, triton {triton.__version__}, Python "
            f"{platform.python_version()}. GEMM M = N = K = {size}, FP8 e4m3, "
            "128x128x128 tiles, persistent, TMA operands. `torch._scaled_mm` FP8 "
            f"peak on this card: {peak / 1e12:.0f} TFLOP/s."
        ),
        "",
        "| variant | result | ms | TFLOP/s | % of peak | vs chained | rel err |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['status']} | | | | | |")
            continue
        vs = f"{r['tflops'] / chained:.2f}x" if chained else ""
        lines.append(
            f"| {name} | ok | {r['ms']:.4f} | {r['tflops']:.0f} | "
            f"{100 * r['tflops'] * 1e12 / peak:.0f} | {vs} | {r['rel_err']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def result_stem(card: str, triton_version: str) -> str:
    """File name of the results, less the suffix (add it as text: with_suffix()
    would take the version's last dot for one)."""
    return f"promotion_{card_slug(card)}_triton-{triton_version}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--ws-timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="print JSON, not the table")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    p.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.size)))
        return 0
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    card = torch.cuda.get_device_name()
    _copy_bw, peak = measure_ceilings()
    results = {}
    for name in VARIANTS:
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        results[name] = run_in_child(name, args.size, args.ws_timeout)
    report = {
        "card": card,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "size": args.size,
        "fp8_peak_tflops": peak / 1e12,
        "results": results,
    }
    table = render(card, args.size, peak, results)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(card, triton.__version__)
    (out / f"{stem}.md").write_text(table)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
