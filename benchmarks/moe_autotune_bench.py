"""Autotune on first use vs the nearest-device fallback vs this card's tuned files.

    python benchmarks/moe_autotune_bench.py [--cells qwen3-30b-a3b:512,...]
                                            [--reps 30] [--budget-s 200] [--smoke]

For each cell (shape:M of ``moe_bench.SHAPES``; by default issue 21's two missed
cells first, then the other shapes with files of this card at M = 1, 32, 2048,
then Mixtral and DSV3-EP1, which have none) and with this card's config files
hidden (a copy of the config folder without them), it times

  (a) fallback: the pipeline as it selects without autotune (the nearest tuned
      device's file, or the heuristic);
  (b) autotuned: ``ATOM_CKFREE_MOE_AUTOTUNE=1`` with an empty cache; the first
      call's wall time is the one-off autotune cost (compilation of the
      candidates included), then the chosen config is timed;
  (c) tuned: the card's own files (the shipped folder; for a shape without a file
      of this card the same as (a)),

each the whole pipeline in one CUDA graph with L2 flushed, as ``moe_bench.py``
times it, three rounds alternating (a), (b), (c), the median of each; every
output is checked against the float64 reference. No new cell starts after
``--budget-s``. Writes ``moe_autotune_<card>.json`` and ``.md`` (card, torch and
Triton versions in the header) to ``--out`` and to ``$OUT`` when set.

``--smoke``: on the CPU under the Triton interpreter, one tiny problem with made-up
config files, wall-clock timing: checks the script end to end, measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

if "--smoke" in sys.argv:  # read when the kernels are defined, i.e. at load
    os.environ["TRITON_INTERPRET"] = "1"

import torch
import triton

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import moe_bench as mb
from moe_reference import make_problem

DEFAULT_CELLS = (
    "qwen3-30b-a3b:512,dsv3-tp8:512,qwen3-30b-a3b:1,dsv3-tp8:1,qwen3-30b-a3b:32,"
    "dsv3-tp8:32,qwen3-30b-a3b:2048,dsv3-tp8:2048,mixtral:32,mixtral:2048,"
    "dsv3-ep1:32"
)
ROUNDS = 3
# --smoke: (E, top_k, K, N) of the tiny problem, block scales, and its made-up
# tables for the "card" and for the nearest tuned device.
SMOKE_SHAPE = (4, 2, 256, 128)
SMOKE_CARD = "NVIDIA H200"
SMOKE_TABLES = {"NVIDIA H200": {"bn1": 32}, "NVIDIA H100 80GB HBM3": {"bn1": 128}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default=DEFAULT_CELLS, help="shape:M,...")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--budget-s", type=float, default=200)
    ap.add_argument("--out", default=str(mb.ROOT / "benchmarks" / "results"))
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    deadline = time.time() + args.budget_s
    tm = mb.load_triton_moe("atom_ckfree_triton_moe_autotune", interpret=args.smoke)
    work = pathlib.Path(tempfile.mkdtemp(prefix="moe-autotune-"))
    os.environ[tm.AUTOTUNE_CACHE_ENV] = str(work / "cache")  # empty: (b) tunes
    bench = Smoke(tm, work) if args.smoke else Gpu(tm, args.reps)
    tuned_dir = bench.config_dir
    hidden_dir = work / "hidden"
    shutil.copytree(tuned_dir, hidden_dir)
    for p in hidden_dir.glob(f"*device_name={tm.device_slug(bench.card)},*"):
        p.unlink()
    mb.log(
        f"card: {bench.card}; torch {torch.__version__}; triton {triton.__version__}"
        f"; hidden: {bench.card}'s config files"
    )
    results = []
    stem = f"moe_autotune_{mb.card_slug(bench.card)}{'_smoke' if args.smoke else ''}"
    outs = [pathlib.Path(args.out)]
    if os.environ.get("OUT"):
        outs.append(pathlib.Path(os.environ["OUT"]))

    def write():  # after every cell: what a run cut short leaves behind
        payload = {
            "card": bench.card,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "smoke": args.smoke,
            "max_candidates": tm.AUTOTUNE_MAX_CANDIDATES,
            "results": results,
        }
        md = render(payload)
        for o in outs:
            o.mkdir(parents=True, exist_ok=True)
            (o / f"{stem}.json").write_text(json.dumps(payload, indent=1))
            (o / f"{stem}.md").write_text(md)
        return md

    md = write()
    cells = [c.split(":") for c in args.cells.split(",")]
    if args.smoke:
        cells = [("smoke", "8")]
    for name, m in cells:
        if time.time() > deadline:
            mb.log(
                f"budget of {args.budget_s:.0f} s spent: {name}:{m} and later skipped"
            )
            break
        results.append(run_cell(tm, bench, name, int(m), tuned_dir, hidden_dir))
        md = write()
    print(md, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["ok"] for r in results) else 1


def run_cell(tm, bench, name, M, tuned_dir, hidden_dir):
    problem, ref, (E, top_k, K, N), bs = bench.problem(name, M)
    device = bench.device

    def choose(cdir):
        return tm.select_moe_config(
            device, E, N, K, M, num_cols=top_k, block_shape=bs, config_dir=cdir
        )

    fallback, tuned = choose(hidden_dir), choose(tuned_dir)
    tm._AUTOTUNED.clear()
    t0 = time.perf_counter()
    autotuned = bench.autotune(problem, fallback, (E, N, K, M, top_k, bs), hidden_dir)
    cost_s = time.perf_counter() - t0
    configs = {"fallback": fallback, "autotuned": autotuned, "tuned": tuned}
    times = {k: [] for k in configs}
    errs = {}
    for r in range(ROUNDS):
        order = list(configs) if r % 2 == 0 else list(configs)[::-1]
        for k in order:
            cfg = tm._fit_arch(configs[k].config.as_dict(), device.arch)

            def fn(cfg=cfg):
                return tm.fused_moe_fp8(*problem[:5], **problem[5], config=cfg)

            if k not in errs:
                errs[k] = mb.rel_err(fn()[: ref.shape[0]], ref)
            times[k].append(bench.time(fn))
    ms = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "shape": name,
        "M": M,
        **{f"{k}_ms": ms[k] for k in configs},
        **{f"{k}_err": errs[k] for k in configs},
        **{f"{k}_cfg": configs[k].config.overrides() for k in configs},
        "fallback_source": label(fallback.source),
        "tuned_source": label(tuned.source),
        "autotune_s": cost_s,
        "ok": all(e < mb.FULL_TOL for e in errs.values()),
    }
    mb.log(
        f"[{name}] M={M}: fallback {ms['fallback']:.4f} ms ({row['fallback_source']}), "
        f"autotuned {ms['autotuned']:.4f} ms (autotune {cost_s:.1f} s), tuned "
        f"{ms['tuned']:.4f} ms ({row['tuned_source']}); errors "
        + ", ".join(f"{k} {e:.2e}" for k, e in errs.items())
        + ("" if row["ok"] else "  <-- FAILED CHECK")
    )
    return row


def label(source):
    return mb._config_label(source) if "device_name=" in source else source


class Gpu:
    """The real card: moe_bench's problems and CUDA-graph timing; autotune
    through the pipeline's own switch (the first call of the pipeline)."""

    def __init__(self, tm, reps):
        self.tm, self.reps = tm, reps
        self.card = torch.cuda.get_device_name()
        self.device = tm.device_info(torch.device("cuda"))
        self.config_dir = tm.CONFIG_DIR
        self.flush = mb.L2Flush()
        self._weights = {}

    def problem(self, name, M):
        E, top_k, K, N, mode = mb.SHAPES[name]
        if name not in self._weights:
            self._weights.clear()  # one shape's weights at a time (DSV3-EP1: 11 GB)
            torch.cuda.empty_cache()
            self._weights[name] = mb.make_weights(E, K, N, mode)
        w13, w2, s13, s2, bs = self._weights[name]
        x, tw, ti = mb.make_routing(M, E, top_k, K, seed=M)
        n = min(M, 64)
        ref = mb.moe_reference(x[:n], w13, w2, tw[:n], ti[:n], s13, s2, bs)
        problem = (x, w13, w2, tw, ti, {"w13_scale": s13, "w2_scale": s2})
        problem[5]["block_shape"] = bs
        return problem, ref, (E, top_k, K, N), bs

    def autotune(self, problem, fallback, dims, hidden_dir):
        tm = self.tm
        E, N, K, M, _, bs = dims
        os.environ[tm.AUTOTUNE_ENV] = "1"
        tm.CONFIG_DIR = hidden_dir  # the pipeline reads its folder at the call
        try:
            tm.fused_moe_fp8(*problem[:5], **problem[5])
            torch.cuda.synchronize()
            plan = tm.plan_moe_fp8(*problem[:5], **problem[5])  # no timing: cached
        finally:
            os.environ[tm.AUTOTUNE_ENV] = "0"
            tm.CONFIG_DIR = self.config_dir
        path = tm.autotune_cache_file(self.card, E, N, K, block_shape=bs)
        bucket = tm.autotune_bucket(M)
        choice = tm._AUTOTUNED[(str(path), bucket)]
        assert dict(tm._parse_table(str(path)))[bucket] == choice.config
        # The pipeline's own path takes the choice (the tiles and launch knobs;
        # plan_moe_fp8 narrows K steps to the scale groups).
        want = tm._fit_arch(choice.config.as_dict(), self.device.arch)
        knobs = ("block_m", "bn1", "bn2", "w1", "w2", "s1", "s2", "reduce", "tma2")
        assert all(plan.cfg[k] == want[k] for k in knobs), (plan.cfg, want)
        return choice

    def time(self, fn):
        return mb.time_graph(fn, self.reps, self.flush)


class Smoke:
    """The CPU under the interpreter: a tiny problem, made-up config files (this
    'card' tuned, the nearest device not), wall-clock timing, autotune called
    directly (the pipeline's switch needs a GPU)."""

    def __init__(self, tm, work):
        self.tm = tm
        self.card = SMOKE_CARD
        self.config_dir = work / "configs"
        shutil.copytree(tm.CONFIG_DIR, self.config_dir)
        E, _, K, N = SMOKE_SHAPE
        for dev, table in SMOKE_TABLES.items():
            name = tm.config_file_name(dev, E, N, K, block_shape=(128, 128))
            (self.config_dir / name).write_text(json.dumps({"8": table}))
        self.device = tm.known_device(SMOKE_CARD, self.config_dir)

    def problem(self, name, M):
        E, top_k, K, N = SMOKE_SHAPE
        x, w13, w2, tw, ti, s13, s2, bs = make_problem(
            M, K, N, E, top_k, scale_mode="block"
        )
        ref = mb.moe_reference(x, w13, w2, tw, ti, s13, s2, bs)
        problem = (x, w13, w2, tw, ti, {"w13_scale": s13, "w2_scale": s2})
        problem[5]["block_shape"] = bs
        return problem, ref, (E, top_k, K, N), bs

    def autotune(self, problem, fallback, dims, hidden_dir):
        E, N, K, M, top_k, bs = dims

        def measure(cfg):
            return self.time(
                lambda: self.tm.fused_moe_fp8(*problem[:5], **problem[5], config=cfg)
            )

        return self.tm.autotune_moe_config(
            fallback,
            self.device,
            E,
            N,
            K,
            M,
            measure,
            num_cols=top_k,
            block_shape=bs,
            config_dir=hidden_dir,
        )

    def time(self, fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def render(payload):
    lines = [
        f"# Triton FP8 MoE autotune on first use, {payload['card']}"
        + (" (smoke run on the CPU: no measurement)" if payload["smoke"] else ""),
        "",
        (
            f"torch {payload['torch']}, triton {payload['triton']}. This card's "
            "config "
            "files hidden for fallback and autotuned. fallback = the nearest tuned "
            "device's config (or the heuristic), autotuned = the fastest of at most "
            f"{payload['max_candidates']} candidates timed on first use (autotune s: "
            "the first call's wall time, compilation included; Triton's kernel cache "
            "on disk is kept, so a variant built for an earlier cell is not built "
            "again), tuned = this card's "
            "own files. Whole pipeline in one CUDA graph, L2 flushed, median of 3 "
            "alternating rounds of the median of the replays; ratios over tuned "
            "(> 1: slower than tuned)."
        ),
        "",
        (
            "| shape | M | fallback ms | autotuned ms | tuned ms | fallback ÷ tuned | "
            "autotuned ÷ tuned | autotune s | fallback from | tuned from | autotuned "
            "config | rel err a / b / c |"
        ),
        "|" + "---|" * 12,
    ]
    for r in payload["results"]:
        t = r["tuned_ms"]
        cfg = " ".join(f"{k}={v}" for k, v in r["autotuned_cfg"].items()) or "defaults"
        lines.append(
            f"| {r['shape']} | {r['M']} | {r['fallback_ms']:.4f} | "
            f"{r['autotuned_ms']:.4f} | {t:.4f} | {r['fallback_ms'] / t:.2f} | "
            f"{r['autotuned_ms'] / t:.2f} | {r['autotune_s']:.1f} | "
            f"{r['fallback_source']} | {r['tuned_source']} | {cfg} | "
            f"{r['fallback_err']:.1e} / {r['autotuned_err']:.1e} / "
            f"{r['tuned_err']:.1e}{'' if r['ok'] else ' FAIL'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
