"""Benchmark of the portable Triton FP8 MoE pipeline (issue 5).

One command::

    python benchmarks/moe_bench.py [--shapes dsv3-tp8,mixtral] [--ms 1,8,32]
                                   [--reps 30] [--out benchmarks/results]

1. measures the card's ceilings: device-to-device copy bandwidth (bytes read +
   written) and the FP8 matrix peak of ``torch._scaled_mm`` (8192^3, e4m3);
2. for every (shape, M): builds a random problem (routing = top-k of softmax of
   random logits, renormalised), checks our output on the first 128 tokens
   against the float64 reference of the dequantised problem (relative error <
   FULL_TOL) and against one that quantises the activations as the pipeline's
   configuration does (kernel-only error < KERNEL_TOL, issue 5's bar), then times
   * ours: the whole pipeline captured in one CUDA graph, L2 flushed (by reading
     256 MiB) before each replay, median of ``--reps`` replays after 50 ms of
     untimed ones;
   * a plain torch per-expert baseline (bf16 weights dequantised once, a Python
     loop over the experts hit, not graph-capturable), median of 5;
   * the floor: max(FP8 weight bytes of the experts hit / copy bandwidth,
     flops / FP8 peak);
3. prints a markdown table (card, torch and triton versions in its header) and
   writes it to ``benchmarks/results/moe_<card>.md`` (plus a JSON of the numbers).

The AITER peer of issue 5 (AITER's pure-Triton MoE kernels composed as in the RFC,
loaded from the ``amd-aiter`` wheel through stub packages, see ``aiter_peer.py``)
runs in the same process on the same card: with its shipped (MI300X FP8) configs
and with the best of a small launch-config sweep (``--aiter-sweep``, on by
default). Its output is checked against the reference too. Put AITER's
``aiter/ops/triton`` on ``PYTHONPATH`` first (an installed ``amd-aiter`` wheel, or
``git archive`` of AITER's source into an ignored folder). The vLLM peer
(``vllm_peer.py``) runs from ``--vllm-dir``: vLLM's files extracted from its
wheel. ``--render RUN.json [--fallback RUN.json]`` redraws the table from saved
runs, without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import time

import torch
import triton

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "kernels"))
from moe_reference import (
    emulated_quantisation,
    intermediate_amax,
    load_triton_moe,
    moe_reference,
    rel_err,
)

sys.path.insert(0, str(ROOT / "benchmarks"))
from aiter_peer import load_aiter_peer
from vllm_peer import load_vllm_peer

# name: (E, top_k, hidden K, intermediate N, scale mode)
SHAPES = {
    "dsv3-tp8": (256, 8, 7168, 256, "block"),
    "dsv3-ep1": (256, 8, 7168, 2048, "block"),
    "qwen3-30b-a3b": (128, 8, 2048, 768, "block"),
    "mixtral": (8, 2, 4096, 14336, "tensor"),
    # Mixtral with the static per-tensor activation scales of an FP8 checkpoint
    # (here: the amax of this problem's input and intermediate).
    "mixtral-static": (8, 2, 4096, 14336, "tensor-static"),
}
MS = [1, 8, 32, 128, 512, 2048, 8192]

FULL_TOL = 8e-2  # see tests/kernels/test_triton_moe.py for the justification
KERNEL_TOL = 5e-3


def card_slug(card: str) -> str:
    """The card's name as it goes into result file names."""
    return "".join(c if c.isalnum() else "_" for c in card).strip("_")


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------
# Ceilings
# ----------------------------------------------------------------------------------
def _median_ms(fn, reps, flush=None):
    times = []
    for _ in range(reps):
        if flush is not None:
            flush()
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def measure_ceilings():
    n = 1 << 30  # 1 GiB each way
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.random_(0, 255)
    for _ in range(3):
        b.copy_(a)
    ms = _median_ms(lambda: b.copy_(a), 20)
    copy_bw = 2 * n / (ms * 1e-3)
    m = k = n_ = 8192
    x = (torch.randn(m, k, device="cuda") * 0.5).to(torch.float8_e4m3fn)
    w = (torch.randn(n_, k, device="cuda") * 0.5).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device="cuda")

    def mm():
        return torch._scaled_mm(
            x, w, scale_a=one, scale_b=one, out_dtype=torch.bfloat16
        )

    for _ in range(3):
        mm()
    ms = _median_ms(mm, 20)
    fp8_peak = 2 * m * k * n_ / (ms * 1e-3)
    torch.cuda.empty_cache()
    return copy_bw, fp8_peak


# ----------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------
def make_weights(E, K, N, mode, seed=0):
    """Random FP8 weights + scales of the given layout, generated per expert."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    fp8 = torch.float8_e4m3fn
    w13 = torch.empty(E, 2 * N, K, dtype=fp8, device="cuda")
    w2 = torch.empty(E, K, N, dtype=fp8, device="cuda")
    for e in range(E):
        w13[e] = (torch.randn(2 * N, K, generator=g, device="cuda") * 64).to(fp8)
        w2[e] = (torch.randn(K, N, generator=g, device="cuda") * 64).to(fp8)

    def scales(rows, cols):
        base = 1.0 / (64 * math.sqrt(cols))
        if mode.startswith("tensor"):
            shape = (E,)
        elif mode == "channel":
            shape = (E, rows)
        else:
            shape = (E, triton.cdiv(rows, 128), triton.cdiv(cols, 128))
        return base * (0.5 + torch.rand(shape, generator=g, device="cuda"))

    bs = (128, 128) if mode == "block" else None
    return w13, w2, scales(2 * N, K), scales(K, N), bs


def make_routing(M, E, top_k, K, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, K, generator=g, device="cuda").to(torch.bfloat16)
    logits = torch.randn(M, E, generator=g, device="cuda")
    tw, ti = torch.topk(logits.softmax(-1), top_k, dim=-1)
    tw = tw / tw.sum(-1, keepdim=True)
    return x, tw.float(), ti.to(torch.int32)


def shape_modes(name):
    """(block_shape, static activation scales?) of a shape."""
    mode = SHAPES[name][4]
    return ((128, 128) if mode == "block" else None), mode.endswith("-static")


def static_scales(name, x, w13, s13, ti, bs):
    """(a13_scale, a2_scale) for a static-scale shape, else None: the input's
    amax and the intermediate's (float64, first 128 tokens) over the FP8 max."""
    if not shape_modes(name)[1]:
        return None
    fmax = torch.finfo(w13.dtype).max
    n = min(x.shape[0], 128)
    h_amax = intermediate_amax(x[:n], w13, ti[:n], s13, bs)
    a13 = (x.float().abs().amax() / fmax).reshape(1)
    return a13, torch.tensor([h_amax / fmax], device=x.device, dtype=torch.float32)


def floor_ms(ti, K, N, copy_bw, fp8_peak):
    hit = torch.unique(ti).numel()
    wbytes = hit * 3 * N * K
    flops = 2 * ti.numel() * 3 * N * K
    return max(wbytes / copy_bw, flops / fp8_peak) * 1e3


# ----------------------------------------------------------------------------------
# Runners
# ----------------------------------------------------------------------------------
class L2Flush:
    """Evicts L2 by reading 256 MiB: the lines left behind are clean, so no
    write-back of the flush itself lands in the timed region (a memset left up to
    50 MB of dirty lines, ~17 us of writes charged to the next kernel)."""

    def __init__(self):
        self.buf = torch.ones(256 << 20, dtype=torch.uint8, device="cuda")

    def __call__(self):
        self.buf.max()


SETTLE_S = 0.05


def time_graph(fn, reps, flush):
    """Capture fn in one CUDA graph; median replay time with L2 flushed, after
    SETTLE_S of untimed replays (clocks settle after the previous work, e.g. the
    float64 reference, the same for every contender)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    settle_until = time.perf_counter() + SETTLE_S
    while time.perf_counter() < settle_until:
        flush()
        g.replay()
        torch.cuda.synchronize()
    return _median_ms(g.replay, reps, flush)


def torch_baseline(x, w13_bf, w2_bf, tw, ti):
    """Plain torch: per-expert loop over the experts hit, bf16 weights."""
    M, K = x.shape
    N = w2_bf.shape[2]
    out = torch.zeros(M, K, dtype=torch.float32, device=x.device)
    for e in torch.unique(ti).tolist():
        tok, col = (ti == e).nonzero(as_tuple=True)
        gu = x[tok] @ w13_bf[e].t()
        h = torch.nn.functional.silu(gu[:, :N]) * gu[:, N:]
        y = (h @ w2_bf[e].t()).float() * tw[tok, col][:, None]
        out.index_add_(0, tok, y)
    return out.to(x.dtype)


def dequant_bf16(w, s, bs):
    E, R, C = w.shape
    out = torch.empty(E, R, C, dtype=torch.bfloat16, device=w.device)
    for e in range(E):
        se = s[e].float()
        if bs is not None:
            se = se.repeat_interleave(128, 0)[:R].repeat_interleave(128, 1)[:, :C]
        elif se.dim() == 1 and se.numel() == R:
            se = se[:, None]
        out[e] = (w[e].float() * se).to(torch.bfloat16)
    return out


# ----------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch baseline")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-aiter", action="store_true", help="skip the AITER peer")
    ap.add_argument(
        "--no-aiter-sweep", action="store_true", help="AITER with shipped configs only"
    )
    ap.add_argument(
        "--vllm-dir",
        default=str(ROOT / ".vllm" / "extracted"),
        help="vLLM's files extracted from its wheel (vllm_peer.extract); "
        "'' to skip the vLLM peer",
    )
    ap.add_argument(
        "--config-dir",
        default="",
        help="the pipeline's config folder (default: the one beside the module)",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the pipeline cut after alignment and after GEMM1",
    )
    args = ap.parse_args(argv)

    tm = load_triton_moe("atom_ckfree_triton_moe_bench", interpret=False)
    if args.config_dir:
        tm.CONFIG_DIR = pathlib.Path(args.config_dir)
    card = torch.cuda.get_device_name()
    log(f"card: {card}; torch {torch.__version__}; triton {triton.__version__}")
    copy_bw, fp8_peak = measure_ceilings()
    log(
        f"copy bandwidth {copy_bw / 1e12:.3f} TB/s; FP8 _scaled_mm {fp8_peak / 1e12:.0f} TFLOP/s"
    )

    peer, why = (None, "--no-aiter") if args.no_aiter else load_aiter_peer()
    log(f"AITER peer: {'loaded from ' + str(peer.root) if peer else why}")
    args.peer, args.peer_why = peer, why
    args.vllm, args.vllm_why = (None, "--vllm-dir ''")
    if args.vllm_dir:
        args.vllm, args.vllm_why = load_vllm_peer(pathlib.Path(args.vllm_dir), tm)
    log(f"vLLM peer: {'loaded from ' + args.vllm_dir if args.vllm else args.vllm_why}")

    flush = L2Flush()
    ms_list = [int(m) for m in args.ms.split(",")]
    results = []
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"moe_{card_slug(card)}{args.tag}"

    def payload_of(results):
        return {
            "card": card,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "copy_bw": copy_bw,
            "fp8_peak": fp8_peak,
            "aiter": f"from {peer.root}" if peer else f"not run: {why}",
            "vllm": (
                f"from {args.vllm_dir}" if args.vllm else f"not run: {args.vllm_why}"
            ),
            "config_dir": str(tm.CONFIG_DIR),
            "results": results,
        }

    for name in args.shapes.split(","):
        results += bench_shape(tm, name, ms_list, args, flush, copy_bw, fp8_peak)
        torch.cuda.empty_cache()
        # What a run cut short leaves behind.
        (out_dir / f"{stem}.json").write_text(json.dumps(payload_of(results), indent=1))

    payload = payload_of(results)
    md = render(payload)
    print(md, flush=True)
    (out_dir / f"{stem}.md").write_text(md)
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    if os.environ.get("OUT"):
        o = pathlib.Path(os.environ["OUT"])
        (o / f"{stem}.md").write_text(md)
        (o / f"{stem}.json").write_text((out_dir / f"{stem}.json").read_text())
    return 0 if all(r["ok"] for r in results) else 1


def bench_shape(tm, name, ms_list, args, flush, copy_bw, fp8_peak):
    E, top_k, K, N, mode = SHAPES[name]
    t0 = time.time()
    w13, w2, s13, s2, bs = make_weights(E, K, N, mode)
    w13_bf = w2_bf = None
    if not args.no_torch:
        w13_bf, w2_bf = dequant_bf16(w13, s13, bs), dequant_bf16(w2, s2, bs)
    log(f"[{name}] weights ready in {time.time() - t0:.1f}s")
    results = []
    for M in ms_list:
        x, tw, ti = make_routing(M, E, top_k, K, seed=M)
        static = static_scales(name, x, w13, s13, ti, bs)
        a13, a2 = static or (None, None)
        problem = {
            "w13_scale": s13,
            "w2_scale": s2,
            "block_shape": bs,
            "a13_scale": a13,
            "a2_scale": a2,
        }

        def ours(x=x, tw=tw, ti=ti, problem=problem):
            return tm.fused_moe_fp8(x, w13, w2, tw, ti, **problem)

        def base(x=x, tw=tw, ti=ti):
            return torch_baseline(x, w13_bf, w2_bf, tw, ti)

        out = ours()
        torch.cuda.synchronize()
        nchk = min(M, 128)
        ref = moe_reference(x[:nchk], w13, w2, tw[:nchk], ti[:nchk], s13, s2, bs)
        err = rel_err(out[:nchk], ref)
        choice = tm.select_moe_config(
            tm.device_info(x.device),
            E,
            N,
            K,
            M,
            num_cols=top_k,
            block_shape=bs,
            static_scales=static is not None,
        )
        emulated = emulated_quantisation(choice.config.as_dict(), K, bs, x.dtype)
        if static is not None:
            emulated = {"x_static": a13.item(), "h_static": a2.item()}
        kref = moe_reference(
            x[:nchk], w13, w2, tw[:nchk], ti[:nchk], s13, s2, bs, **emulated
        )
        kerr = rel_err(out[:nchk], kref)
        ok = bool(torch.isfinite(out).all()) and err < FULL_TOL and kerr < KERNEL_TOL
        t_ours = time_graph(ours, args.reps, flush)
        stages = ""
        if args.breakdown:
            plan = tm.plan_moe_fp8(x, w13, w2, tw, ti, **problem)
            t_al = time_graph(plan.align, args.reps, flush)
            t_g1 = time_graph(
                lambda plan=plan: plan.gemm1(plan.align()), args.reps, flush
            )
            stages = (
                f" [align {t_al:.4f}, +quant+gemm1 {t_g1 - t_al:.4f}, "
                f"+gemm2+reduce {t_ours - t_g1:.4f}]"
            )
        aiter = run_aiter(args, x, w13, w2, s13, s2, tw, ti, bs, ref, nchk, flush)
        vllm = run_vllm(args, (x, w13, w2, s13, s2, tw, ti, bs), static, ref, flush)
        t_torch = float("nan")
        if not args.no_torch:
            t_torch = _median_ms(base, 5, flush)
        fl = floor_ms(ti, K, N, copy_bw, fp8_peak)
        flops = 2 * ti.numel() * 3 * N * K
        results.append(
            {
                "shape": name,
                "M": M,
                "ours_ms": t_ours,
                "torch_ms": t_torch,
                "floor_ms": fl,
                "rel_err": err,
                "kernel_err": kerr,
                "config": choice.source,
                "ok": ok,
                "tflops": flops / (t_ours * 1e-3) / 1e12,
                **aiter,
                **vllm,
            }
        )
        log(
            f"[{name}] M={M}: ours {t_ours:.4f} ms, torch {t_torch:.4f} ms, "
            f"floor {fl:.4f} ms, x floor {t_ours / fl:.2f}, err {err:.2e}, "
            f"kernel err {kerr:.2e}, "
            f"AITER {aiter['aiter_ms']:.4f} (best sweep {aiter['aiter_best_ms']:.4f}, "
            f"err {aiter['aiter_err']:.2e}), vLLM GEMMs {vllm['vllm_gemms_ms']:.4f} "
            f"whole {vllm['vllm_ms']:.4f} (err {vllm['vllm_err']:.2e}, "
            f"{vllm['vllm_cfg']})"
            f"{'' if ok else '  <-- FAILED CHECK'}{stages}"
        )
    return results


def run_vllm(args, problem, static, ref, flush):
    """vLLM peer: its two GEMM launches alone (inputs prepared once) and its
    whole pipeline, with vLLM's config for the card and M."""
    nan = float("nan")
    res = {"vllm_gemms_ms": nan, "vllm_ms": nan, "vllm_err": nan, "vllm_cfg": "-"}
    if args.vllm is None:
        return res
    x, w13, w2, s13, s2, tw, ti, bs = problem
    card = card_slug(torch.cuda.get_device_name())
    # vLLM names the H200 family's files NVIDIA_H200 (get_config_file_name).
    if "H200" in card.split("_"):
        card = "NVIDIA_H200"
    cfg, where = args.vllm.config(card, w13.shape[0], w2.shape[2], x.shape[0], bs)
    res["vllm_cfg"] = (
        "{}:M{BLOCK_SIZE_M}N{BLOCK_SIZE_N}K{BLOCK_SIZE_K}w{num_warps}s{num_stages}".format(
            where, **cfg
        )
    )
    try:
        gemms, pipeline = args.vllm.prepare(
            x, w13, w2, s13, s2, tw, ti, bs, cfg, static
        )
        out = pipeline()
        torch.cuda.synchronize()
        n = ref.shape[0]
        res["vllm_err"] = rel_err(out[:n], ref)
        res["vllm_gemms_ms"] = time_graph(gemms, args.reps, flush)
        res["vllm_ms"] = time_graph(pipeline, args.reps, flush)
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        log(f"  vLLM peer failed: {exc!r}"[:400])
    return res


def run_aiter(args, x, w13, w2, s13, s2, tw, ti, bs, ref, nchk, flush):
    """AITER peer: shipped configs, then the best of the small sweep."""
    nan = float("nan")
    res = {"aiter_ms": nan, "aiter_best_ms": nan, "aiter_err": nan, "aiter_best": ""}
    peer = args.peer
    if peer is None:
        return res
    M = x.shape[0]

    def fn(cfg):
        return lambda: peer.run(x, w13, w2, s13, s2, tw, ti, bs, config=cfg)

    try:
        out = fn(None)()
        torch.cuda.synchronize()
        res["aiter_err"] = rel_err(out[:nchk], ref)
        res["aiter_ms"] = time_graph(fn(None), args.reps, flush)
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        log(f"  AITER shipped config failed: {exc!r}"[:400])
        return res
    best, best_cfg = res["aiter_ms"], "shipped"
    if not args.no_aiter_sweep:
        for cfg in peer.sweep(M):
            try:
                t = time_graph(fn(cfg), args.reps, flush)
            except Exception as exc:  # noqa: BLE001
                log(f"  AITER sweep {cfg} failed: {exc!r}"[:300])
                continue
            if t < best:
                best, best_cfg = t, cfg
    res["aiter_best_ms"] = best
    if isinstance(best_cfg, dict):
        best_cfg = "M{BLOCK_SIZE_M}N{BLOCK_SIZE_N}w{num_warps}s{num_stages}".format(
            **best_cfg
        )
    res["aiter_best"] = best_cfg
    return res


def _config_label(source):
    # "heuristic", or the device whose config file was used.
    if "device_name=" not in source:
        return source
    return source.split("device_name=", 1)[1].split(",", 1)[0]


def render(payload, fallback=None):
    """The markdown table of a run's JSON payload; ``fallback``: the payload of a
    run without the card's config files, for the fallback/tuned column."""
    fp8_peak = payload["fp8_peak"]
    fb = {}
    if fallback is not None:
        fb = {(r["shape"], r["M"]): r["ours_ms"] for r in fallback["results"]}
    lines = [
        f"# Triton FP8 MoE on {payload['card']}",
        "",
        (
            f"torch {payload['torch']}, triton {payload['triton']}; measured copy "
            f"bandwidth {payload['copy_bw'] / 1e12:.2f} TB/s, FP8 `_scaled_mm` peak "
            f"{fp8_peak / 1e12:.0f} TFLOP/s."
        ),
        "",
        (
            "Every contender in one CUDA graph, L2 flushed by a 256 MiB read (clean "
            "lines), median ms after 50 ms of untimed replays; ratios are contender "
            "/ ours (> 1: ours is faster). floor = max(FP8 weight bytes of the "
            "experts hit / copy bandwidth, flops / FP8 peak). vLLM = vLLM's Triton "
            f"`fused_moe_kernel` ({payload.get('vllm', 'not run')}), launched as "
            "vLLM does on sm_90 with its shipped config for the card (`shipped`) "
            "or its `get_default_config` (`default`): GEMMs = its two launches "
            "alone, inputs prepared; whole = alignment, quantisation, GEMM1, "
            "SiLU*up, quantisation, GEMM2, top-k sum (glue: our alignment and "
            "quantisation kernels, torch SiLU*up and sum; see "
            "`benchmarks/vllm_peer.py`). AITER = AITER's Triton MoE kernels "
            f"composed as in the RFC ({payload['aiter']}): shipped = its MI300X "
            "FP8 configs, best = the best of a small sweep on this card. torch = "
            "per-expert loop, bf16 weights (eager). fallback = ours without this "
            "card's config files (nearest tuned device), its time / ours. rel err "
            "= vs the float64 reference on the first 128 tokens; kernel err = ours "
            "vs a float64 reference quantising the activations as our "
            f"configuration does (bar < {KERNEL_TOL:g}). config = the device whose "
            "config file ours used. mixtral-static = Mixtral with static "
            "per-tensor activation scales (this problem's amax)."
        ),
        "",
        (
            "| shape | M | ours ms | floor ms | ours/floor | vLLM GEMMs ms | ÷ | "
            "vLLM whole ms | ÷ | AITER shipped ms | ÷ | AITER best ms | ÷ | "
            "fallback ÷ | torch ms | TFLOP/s | %peak | rel err ours | kernel err "
            "ours | rel err vLLM | rel err AITER | config | vLLM cfg | AITER best |"
        ),
        "|" + "---|" * 24,
    ]
    for r in payload["results"]:
        o = r["ours_ms"]
        nan = float("nan")
        f = fb.get((r["shape"], r["M"]), nan)
        lines.append(
            f"| {r['shape']} | {r['M']} | {o:.4f} | {r['floor_ms']:.4f} | "
            f"{o / r['floor_ms']:.2f} | {r.get('vllm_gemms_ms', nan):.4f} | "
            f"{r.get('vllm_gemms_ms', nan) / o:.2f} | {r.get('vllm_ms', nan):.4f} | "
            f"{r.get('vllm_ms', nan) / o:.2f} | {r['aiter_ms']:.4f} | "
            f"{r['aiter_ms'] / o:.2f} | {r['aiter_best_ms']:.4f} | "
            f"{r['aiter_best_ms'] / o:.2f} | {f / o:.2f} | "
            f"{r['torch_ms']:.3f} | {r['tflops']:.0f} | "
            f"{100 * r['tflops'] * 1e12 / fp8_peak:.0f} | {r['rel_err']:.2e} | "
            f"{r['kernel_err']:.2e}{'' if r['ok'] else ' FAIL'} | "
            f"{r.get('vllm_err', nan):.2e} | {r['aiter_err']:.2e} | "
            f"{_config_label(r.get('config', '-'))} | {r.get('vllm_cfg', '-')} | "
            f"{r['aiter_best'] or '-'} |"
        )
    return "\n".join(lines) + "\n"


def render_main(argv):
    """``--render RUN.json [--fallback FALLBACK.json] [--out FILE.md]``: the table
    from saved runs, without a GPU."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", required=True)
    ap.add_argument("--fallback", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    payload = json.loads(pathlib.Path(args.render).read_text())
    fallback = (
        json.loads(pathlib.Path(args.fallback).read_text()) if args.fallback else None
    )
    md = render(payload, fallback)
    if args.out:
        pathlib.Path(args.out).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(render_main(sys.argv[1:]) if "--render" in sys.argv else main())
