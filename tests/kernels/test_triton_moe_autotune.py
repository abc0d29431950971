"""Autotune on first use of the Triton FP8 MoE pipeline, on the CPU.

The selection and cache logic (which candidates, how many, the cache's key,
reads, writes and faults) is tested with an injected ``measure`` that returns
made-up times: that fake stands in for the GPU timing ONLY, to steer which
candidate wins. Likewise the GPU timer's test fakes the CUDA graph and
``do_bench`` (there is no GPU here) to check which candidates reach the timing.
The candidates themselves run through the real kernels under the Triton
interpreter in ``test_every_candidate_computes_the_right_result``; the
interpreter and graph-capture guards, the switch and the pipeline's use of the
choice are tested on the real entry points; the benchmark runs in its smoke mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels run (interpreted)

import pytest
import torch
import triton.testing

try:  # tests/ is a package in this repository; also runnable as loose files
    from .moe_reference import load_triton_moe, make_problem, moe_reference, rel_err
except ImportError:
    from moe_reference import load_triton_moe, make_problem, moe_reference, rel_err

tm = load_triton_moe("atom_ckfree_triton_moe_interp", interpret=True)
REPO = tm.CONFIG_DIR.parents[4]

BLOCK = (128, 128)
QWEN3 = (128, 768, 2048)  # E, N, K
DSV3_TP8 = (256, 256, 7168)
MIXTRAL = (8, 14336, 4096)


@pytest.fixture
def cdir(tmp_path, monkeypatch):
    """The shipped configs without the H200's files, an empty autotune cache, no
    choices of earlier tests."""
    d = tmp_path / "configs"
    shutil.copytree(tm.CONFIG_DIR, d)
    for p in d.glob("*device_name=NVIDIA_H200,*"):
        p.unlink()
    monkeypatch.setenv(tm.AUTOTUNE_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(tm, "_AUTOTUNED", {})
    return d


class FakeTimes:
    """``measure`` with made-up times: ``fast(cfg)`` decides the winner, or with
    ``falling`` every new candidate is 10 % faster than the one before (so the
    search never stops early); records every config it was asked to time."""

    def __init__(self, fast=lambda cfg: False, falling=False):
        self.fast, self.falling = fast, falling
        self.timed = []

    def __call__(self, cfg):
        self.timed.append(cfg)
        if self.falling:
            return 0.9 ** len(self.timed)
        return 0.5 if self.fast(cfg) else 1.0


def _tune(cdir, measure, shape=QWEN3, m=512, device="NVIDIA H200", **kw):
    device = tm.known_device(device, cdir) if isinstance(device, str) else device
    E, N, K = shape
    kw.setdefault("block_shape", None if shape == MIXTRAL else BLOCK)
    kw.setdefault("num_cols", 2 if shape == MIXTRAL else 8)
    fallback = tm.select_moe_config(device, E, N, K, m, config_dir=cdir, **kw)
    return fallback, tm.autotune_moe_config(
        fallback, device, E, N, K, m, measure, config_dir=cdir, **kw
    )


def _cache(shape=QWEN3, device="NVIDIA H200", block_shape=BLOCK):
    return tm.autotune_cache_file(device, *shape, block_shape=block_shape)


def test_the_fastest_candidate_wins_and_is_cached_in_the_config_schema(cdir):
    fake = FakeTimes(lambda c: c.block_m == 64 and c.bn1 == 64)
    fallback, got = _tune(cdir, fake)
    assert got.config.block_m == 64 and got.config.bn1 == 64
    assert fake.timed[0] == fallback.config
    path = _cache()
    assert got.source == f"autotuned {path}"
    # The shipped files' loader reads the cache: one bucket, this M's.
    assert tm.load_config_file(path) == {512: got.config}


def test_without_a_faster_candidate_the_fallback_stays(cdir):
    fallback, got = _tune(cdir, FakeTimes())
    assert got.config == fallback.config


def test_cache_key_names_the_device_and_the_triton_version(cdir, monkeypatch):
    path = _cache()
    assert path.parent.name == f"triton-{tm.triton.__version__}"
    assert "device_name=NVIDIA_H200," in path.name
    assert path.parent.parent == cdir.parent / "cache"
    fast = FakeTimes(lambda c: c.block_m == 64)
    _tune(cdir, fast)
    assert path.is_file()
    # Another Triton version or another card: not this cache; tuned again.
    monkeypatch.setattr(tm, "_AUTOTUNED", {})
    monkeypatch.setattr(tm.triton, "__version__", "0.0.1")
    again = FakeTimes()
    assert _tune(cdir, again)[1].config.block_m != 64 and again.timed
    monkeypatch.undo()
    monkeypatch.setenv(tm.AUTOTUNE_CACHE_ENV, str(cdir.parent / "cache"))
    monkeypatch.setattr(tm, "_AUTOTUNED", {})
    other = tm.DeviceInfo("NVIDIA H20", "sm_90", 78, 232448, True)
    again = FakeTimes()
    _tune(cdir, again, device=other)
    assert again.timed
    assert _cache(device="NVIDIA H20").is_file()


def test_a_second_call_does_not_time_again_nor_does_a_new_process(cdir, monkeypatch):
    first = FakeTimes(lambda c: c.block_m == 64)
    _, chosen = _tune(cdir, first)
    assert len(first.timed) > 1
    second = FakeTimes()
    assert _tune(cdir, second)[1] == chosen
    assert second.timed == []
    # A new process: only the cache file is left.
    monkeypatch.setattr(tm, "_AUTOTUNED", {})
    third = FakeTimes()
    assert _tune(cdir, third)[1].config == chosen.config
    assert third.timed == []
    # Another M of the same bucket is not tuned again; another bucket is.
    assert _tune(cdir, third, m=300)[1].config == chosen.config
    assert third.timed == []
    _tune(cdir, third, m=2048)
    assert third.timed
    assert set(tm.load_config_file(_cache())) == {512, 2048}


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"512": {"block_mm": 64}}', '{"512": {"bn1": 48}}', "[]"],
)
def test_a_corrupt_or_foreign_cache_is_ignored_with_a_warning(cdir, caplog, text):
    path = _cache()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    fake = FakeTimes(lambda c: c.block_m == 64)
    with caplog.at_level(logging.WARNING):
        _, got = _tune(cdir, fake)
    assert fake.timed and got.config.block_m == 64
    assert any(
        "ignoring the MoE autotune cache" in r.message and str(path) in r.message
        for r in caplog.records
    )
    assert tm.load_config_file(path) == {512: got.config}  # replaced by a good one


def test_a_crash_mid_write_leaves_the_old_cache_whole(cdir, monkeypatch):
    _tune(cdir, FakeTimes(lambda c: c.block_m == 64))
    path = _cache()
    before = path.read_bytes()

    def crash(fd):
        raise KeyboardInterrupt  # killed after part of the file was written

    monkeypatch.setattr(tm.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        _tune(cdir, FakeTimes(), m=2048)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


WRITER = """
import sys
from tests.kernels.moe_reference import load_triton_moe
tm = load_triton_moe("writer", interpret=True)
path, first = tm.pathlib.Path(sys.argv[1]), int(sys.argv[2])
for b in range(first, first + 300):
    tm._write_autotune_cache(path, b, tm.MoeConfig(bn1=16 << (b % 4)))
"""


def test_two_processes_writing_at_once_never_leave_a_broken_cache(cdir):
    path = _cache()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(first)], env=env)
        for first in (1, 1001)
    ]
    reads = 0
    while any(w.poll() is None for w in writers):
        if path.is_file():
            table = tm._parse_table(str(path))  # raises on a partial file
            assert table and all(isinstance(c, tm.MoeConfig) for _, c in table)
            reads += 1
    assert [w.returncode for w in writers] == [0, 0]
    assert reads > 10
    buckets = set(tm.load_config_file(path))
    assert {300, 1300} & buckets  # each writer's last bucket or the other's
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_temporary_file_left_by_a_killed_process_is_not_read(cdir):
    path = _cache()
    path.parent.mkdir(parents=True)
    (path.parent / ".tmp-abc.json").write_text('{"512": {"bn1"')
    fake = FakeTimes(lambda c: c.block_m == 64)
    _tune(cdir, fake)
    assert tm.load_config_file(path)[512].block_m == 64


def test_an_unwritable_cache_keeps_the_choice_for_the_process(cdir, caplog):
    blocker = cdir.parent / "cache"
    blocker.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        _, got = _tune(cdir, FakeTimes(lambda c: c.block_m == 64))
    assert got.config.block_m == 64
    assert any(
        "cannot write the MoE autotune cache" in r.message for r in caplog.records
    )
    again = FakeTimes()
    assert _tune(cdir, again)[1] == got and again.timed == []


def test_at_most_twelve_candidates_are_timed(cdir):
    assert tm.AUTOTUNE_MAX_CANDIDATES == 12
    counts = []
    for shape in (QWEN3, DSV3_TP8, MIXTRAL):
        for m in (1, 32, 512, 8192):
            fake = FakeTimes(falling=True)
            _tune(cdir, fake, shape=shape, m=m)
            assert len(fake.timed) == len(set(fake.timed))  # none timed twice
            counts.append(len(fake.timed))
    assert max(counts) == tm.AUTOTUNE_MAX_CANDIDATES


DEVICES = [
    tm.DeviceInfo("NVIDIA H200", "sm_90", 132, 232448, True),
    tm.DeviceInfo("NVIDIA A100-SXM4-80GB", "sm_80", 108, 166912, False),
    tm.DeviceInfo("NVIDIA L4", "sm_89", 58, 101376, True),
    tm.DeviceInfo("AMD Instinct MI325X", "gfx942", 304, 65536, True),
    tm.DeviceInfo("AMD Instinct MI350X", "gfx950", 256, 163840, True),
]


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.arch)
def test_every_candidate_fits_the_device(cdir, device):
    for shape in (QWEN3, DSV3_TP8, MIXTRAL):
        for m in (1, 8, 128, 512, 2048, 8192):
            for fake in (FakeTimes(), FakeTimes(falling=True)):
                _tune(cdir, fake, shape=shape, m=m, device=device)
                for c in fake.timed[1:]:  # the first is the fallback itself
                    assert tm.autotune_smem_bytes(c) <= device.smem_bytes, c
                    assert not c.chain2
                    assert c.bm2 is None or c.bm2 <= c.block_m
                    lane = 64 if device.vendor == "amd" else 32
                    assert max(c.w1, c.w2) * lane <= 1024
                    if device.arch in ("sm_80", "sm_89", "gfx942", "gfx950"):
                        assert not c.tma2, c
                    if device.vendor == "amd":
                        assert c.persistent2 == 0
                        assert tm._fit_arch(c.as_dict(), device.arch) == c.as_dict()
                tm._AUTOTUNED.clear()
                for p in (cdir.parent / "cache").rglob("*.json"):
                    p.unlink()


def test_candidates_keep_the_quantisation_of_their_seed(cdir):
    fake = FakeTimes(lambda c: True)
    fallback, _ = _tune(cdir, fake, shape=QWEN3, m=512)
    seeds = tm._autotune_seeds(
        fallback.config,
        tm.known_device("NVIDIA H200", cdir),
        *QWEN3,
        512,
        8,
        BLOCK,
        False,
        cdir,
    )
    knobs = {(s.quant_x, s.quant_h, s.x_per_token) for s in seeds}
    for c in fake.timed:
        assert (c.quant_x, c.quant_h, c.x_per_token) in knobs


def test_a_device_with_its_own_file_is_not_autotuned(tmp_path, monkeypatch):
    monkeypatch.setenv(tm.AUTOTUNE_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(tm, "_AUTOTUNED", {})
    fake = FakeTimes(lambda c: True)
    h200 = tm.known_device("NVIDIA H200")
    fallback, got = _tune(tm.CONFIG_DIR, fake, shape=QWEN3, m=1, device=h200)
    assert got == fallback and fake.timed == []
    assert not any(tmp_path.iterdir())


def test_no_timing_while_a_graph_is_captured(cdir, monkeypatch):
    monkeypatch.setattr(tm.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tm.torch.cuda, "is_current_stream_capturing", lambda: True)
    fake = FakeTimes(lambda c: True)
    fallback, got = _tune(cdir, fake)
    assert got == fallback and fake.timed == []
    assert not (cdir.parent / "cache").exists()
    # Not remembered: once the capture is over, the bucket is tuned.
    monkeypatch.setattr(tm.torch.cuda, "is_current_stream_capturing", lambda: False)
    _tune(cdir, fake)
    assert fake.timed
    # A cached choice is used during a capture (reading a file is allowed).
    monkeypatch.setattr(tm, "_AUTOTUNED", {})
    monkeypatch.setattr(tm.torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _tune(cdir, FakeTimes())[1].config == tm.load_config_file(_cache())[512]


def test_the_switch_is_off_unless_set_to_one(monkeypatch):
    monkeypatch.delenv(tm.AUTOTUNE_ENV, raising=False)
    assert not tm.autotune_enabled()
    monkeypatch.setenv(tm.AUTOTUNE_ENV, "0")
    assert not tm.autotune_enabled()
    monkeypatch.setenv(tm.AUTOTUNE_ENV, "1")
    assert tm.autotune_enabled()


def test_no_autotune_under_the_interpreter(cdir, monkeypatch):
    monkeypatch.setenv(tm.AUTOTUNE_ENV, "1")
    calls = []
    monkeypatch.setattr(tm, "autotune_moe_config", lambda *a, **k: calls.append(a))
    x, w13, w2, tw, ti, s13, s2, bs = make_problem(4, 256, 128, 4, 2)
    # As if on a GPU without its own config file (TRITON_INTERPRET=1 there runs
    # the kernels on copies in host memory): only the interpreter stops autotune.
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    monkeypatch.setattr(
        tm, "device_info", lambda d: tm.known_device("NVIDIA H200", cdir)
    )
    out = tm.fused_moe_fp8(
        x, w13, w2, tw, ti, w13_scale=s13, w2_scale=s2, block_shape=bs
    )
    assert torch.isfinite(out).all() and calls == []
    assert not (cdir.parent / "cache").exists()


def test_the_gpu_timer_times_only_right_candidates(monkeypatch):
    # The graph and do_bench are faked (there is no GPU): what is tested is
    # which candidates reach the timing.
    class Graph:
        replay = staticmethod(lambda: None)

    timed = []
    monkeypatch.setattr(tm.torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(tm.torch.cuda, "graph", lambda g: contextlib.nullcontext())
    monkeypatch.setattr(
        triton.testing, "do_bench", lambda fn, **kw: timed.append(kw) or 1.0
    )
    good = torch.ones(4, 8)
    outputs = {"a": good, "a2": good * 1.01, "b": good * 3, "nan": good * math.nan}

    def run(cfg):
        if cfg == "boom":
            raise RuntimeError("out of resources: shared memory")
        return outputs[cfg]

    measure = tm._pipeline_timer(run)
    assert measure("a") == 1.0  # the first candidate sets the reference
    assert measure("boom") == math.inf
    assert measure("b") == math.inf  # 2.0 relative deviation from "a"
    assert measure("nan") == math.inf
    assert measure("a2") == 1.0
    assert timed == [{"warmup": 5, "rep": 25, "return_mode": "median"}] * 2


def test_every_candidate_computes_the_right_result(cdir):
    # The candidates of a small problem on an H200 without its files, each run
    # through the kernels under the interpreter and checked against the float64
    # reference; the fake time makes every candidate win so that all steps are
    # taken.
    E, N, K, top_k, M = 4, 128, 256, 2, 8
    x, w13, w2, tw, ti, s13, s2, bs = make_problem(M, K, N, E, top_k)
    ref = moe_reference(x, w13, w2, tw, ti, s13, s2, bs)
    errors = []

    def measure(cfg):
        out = tm.fused_moe_fp8(
            x, w13, w2, tw, ti, w13_scale=s13, w2_scale=s2, block_shape=bs, config=cfg
        )
        errors.append(rel_err(out, ref))
        return 0.9 ** len(errors)

    device = tm.known_device("NVIDIA H200", cdir)
    fallback = tm.select_moe_config(
        device, E, N, K, M, num_cols=top_k, block_shape=bs, config_dir=cdir
    )
    tm.autotune_moe_config(
        fallback,
        device,
        E,
        N,
        K,
        M,
        measure,
        num_cols=top_k,
        block_shape=bs,
        config_dir=cdir,
    )
    assert len(errors) >= 6
    assert max(errors) < 8e-2, errors
    assert os.path.isfile(tm.autotune_cache_file(device.name, E, N, K, block_shape=bs))


def test_the_pipeline_takes_the_autotuned_config_when_switched_on(cdir, monkeypatch):
    # The module built for a GPU (plan_moe_fp8 chooses, it launches nothing), its
    # device faked: an H200 without its files. autotune_moe_config is replaced by
    # a stand-in that returns a config of its own.
    gm = load_triton_moe("atom_ckfree_triton_moe_compiled", interpret=False)
    monkeypatch.setattr(gm, "CONFIG_DIR", cdir)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    h200 = gm.known_device("NVIDIA H200", cdir)
    monkeypatch.setattr(gm, "device_info", lambda d: h200)
    tuned = gm.MoeConfig(block_m=64, bn1=32, bn2=256, s1=2)
    calls = []

    def stand_in(fallback, device, E, N, K, M, measure, **kw):
        calls.append((fallback, device, (E, N, K, M), kw))
        return gm.ConfigChoice(tuned, "stand-in")

    monkeypatch.setattr(gm, "autotune_moe_config", stand_in)
    x, w13, w2, tw, ti, s13, s2, bs = make_problem(8, 256, 128, 4, 2)
    args = (x, w13, w2, tw, ti)
    kw = {"w13_scale": s13, "w2_scale": s2, "block_shape": bs}
    monkeypatch.delenv(gm.AUTOTUNE_ENV, raising=False)
    plain = gm.plan_moe_fp8(*args, **kw).cfg
    assert calls == [] and plain["block_m"] != 64
    monkeypatch.setenv(gm.AUTOTUNE_ENV, "1")
    got = gm.plan_moe_fp8(*args, **kw).cfg
    assert (got["block_m"], got["bn1"], got["bn2"], got["s1"]) == (64, 32, 256, 2)
    ((fallback, device, dims, options),) = calls
    assert device == h200 and dims == (4, 128, 256, 8)
    assert fallback == gm.select_moe_config(
        h200, 4, 128, 256, 8, num_cols=2, block_shape=bs
    )
    assert options == {"num_cols": 2, "block_shape": bs, "static_scales": False}
    # An explicit config is never autotuned.
    gm.plan_moe_fp8(*args, **kw, config={"bn1": 64})
    assert len(calls) == 1


def test_the_autotune_benchmark_runs_end_to_end_in_its_smoke_mode(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("OUT", None)
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "moe_autotune_bench.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads((tmp_path / "moe_autotune_NVIDIA_H200_smoke.json").read_text())
    ((row,),) = [payload["results"]]
    assert row["ok"] and row["autotune_s"] > 0
    assert (row["fallback_source"], row["tuned_source"]) == (
        "NVIDIA_H100_80GB_HBM3",
        "NVIDIA_H200",
    )
    md = (tmp_path / "moe_autotune_NVIDIA_H200_smoke.md").read_text()
    assert f"triton {triton.__version__}" in md and "| smoke | 8 |" in md
