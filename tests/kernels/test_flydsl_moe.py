"""Tests for the overlay's FlyDSL MoE backend (overlay/atom/model_ops/flydsl_moe.py).

CPU only. The module is loaded by file path (it imports only torch + stdlib). The
GEMM stages run against a fake FlyDSL kernel module, installed in ``sys.modules``
under FlyDSL's real module path, that implements in torch the contract read from
FlyDSL's ``kernels/moe/moe_gemm_2stage/{gemm1,gemm2,layout_helpers}.py``:
argument order, sorted-id decoding, sentinel rows, preshuffled weight layout,
per-token / per-channel scales, routing weight in stage 2, output layouts.

References are written independently of the implementation: sorting and
quantisation by straightforward Python loops, the MoE by per-(token, slot) loops
in float64.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.tools import load_file

MODULE_PATH = (
    Path(__file__).resolve().parents[2] / "overlay/atom/model_ops/flydsl_moe.py"
)
NEW_PATH = "kernels.moe.moe_gemm_2stage"
LEGACY_PATH = "kernels.moe_gemm_2stage"
FP8 = (torch.float8_e4m3fnuz, torch.float8_e4m3fn)
OUT_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def _load_module():
    return load_file(MODULE_PATH, "flydsl_moe_under_test")


@pytest.fixture
def no_flydsl(monkeypatch):
    """Make both FlyDSL module paths unimportable (None in sys.modules)."""
    for name in (NEW_PATH, LEGACY_PATH):
        monkeypatch.setitem(sys.modules, name, None)


# --------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------
def ref_sorting(topk_ids, topk_weights, num_experts, block):
    """Loop reference of FlyDSL/CK moe_sorting (kernels/moe/moe_sorting_kernel.py)."""
    ids = topk_ids.tolist()
    wts = topk_weights.tolist()
    m, t = topk_ids.shape
    rows_of = {e: [] for e in range(num_experts)}
    for tok in range(m):
        for slot in range(t):
            rows_of[ids[tok][slot]].append((tok, slot, wts[tok][slot]))
    sentinel = t * 2**24 + m
    s_ids, s_w, s_e = [], [], []
    for e in range(num_experts):
        rows = rows_of[e]
        nblocks = (len(rows) + block - 1) // block
        for b in range(nblocks):
            s_e.append(e)
            for r in range(block):
                i = b * block + r
                if i < len(rows):
                    tok, slot, w = rows[i]
                    s_ids.append(slot * 2**24 + tok)
                    s_w.append(w)
                else:
                    s_ids.append(sentinel)
                    s_w.append(0.0)
    valid = len(s_ids)
    max_padded = m * t + num_experts * block - t
    max_blocks = -(-max_padded // block)
    assert valid <= max_padded and len(s_e) <= max_blocks
    s_ids += [sentinel] * (max_padded - valid)
    s_w += [0.0] * (max_padded - valid)
    s_e += [-1] * (max_blocks - len(s_e))
    return (
        torch.tensor(s_ids, dtype=torch.int32),
        torch.tensor(s_w, dtype=torch.float32),
        torch.tensor(s_e, dtype=torch.int32),
        torch.tensor([valid, m], dtype=torch.int32),
    )


def _fp8_table(fp8_dtype):
    """All finite values of an fp8 dtype, with their codes (decoded by torch)."""
    codes = torch.arange(256, dtype=torch.int64)
    vals = codes.to(torch.uint8).view(fp8_dtype).to(torch.float64)
    keep = torch.isfinite(vals)
    return vals[keep], codes[keep]


def ref_round_fp8(v, fp8_dtype):
    """Round float64 values to the nearest fp8 value, ties to an even code."""
    vals, codes = _fp8_table(fp8_dtype)
    out = []
    for x in v.reshape(-1).tolist():
        dist = (vals - x).abs()
        best = dist.min()
        cand = (dist == best).nonzero().flatten().tolist()
        if len(cand) > 1:
            even = [i for i in cand if codes[i] % 2 == 0]
            cand = even or cand
        out.append(vals[cand[0]].item())
    return torch.tensor(out, dtype=torch.float64).reshape(v.shape)


def ref_quant(x, fp8_dtype):
    """Per-row reference: scale = fp32(amax / fp8_max), q = RNE(fp32(x / scale))."""
    vals, _ = _fp8_table(fp8_dtype)
    fp8_max = vals.max().item()
    qs, scales = [], []
    for row in x.to(torch.float32).reshape(-1, x.shape[-1]):
        amax = max(abs(v) for v in row.tolist())
        scale = torch.tensor(amax, dtype=torch.float32) / torch.tensor(
            fp8_max, dtype=torch.float32
        )
        if amax == 0:
            scale = torch.tensor(1.0, dtype=torch.float32)
        scaled = (row / scale).to(torch.float64).clamp(-fp8_max, fp8_max)
        qs.append(ref_round_fp8(scaled, fp8_dtype))
        scales.append(scale.item())
    q = torch.stack(qs).reshape(x.shape)
    s = torch.tensor(scales, dtype=torch.float32).reshape(*x.shape[:-1], 1)
    return q, s


def _silu(v):
    return v / (1.0 + torch.exp(-v))


def ref_moe_emulated(x, w13_q, w13_s, w2_q, w2_s, topk_w, topk_ids, fp8, out_dtype):
    """Float64 loop reference that reproduces the pipeline's quantisation points."""
    m, k = x.shape
    e_num, two_n, _ = w13_q.shape
    n = two_n // 2
    t = topk_ids.shape[1]
    w13 = w13_q.to(torch.float64) * w13_s.reshape(e_num, two_n, 1).to(torch.float64)
    w2 = w2_q.to(torch.float64) * w2_s.reshape(e_num, k, 1).to(torch.float64)
    xq, xs = ref_quant(x, fp8)
    xd = xq * xs.to(torch.float64)
    inter = torch.empty(m, t, n, dtype=torch.float64)
    for tok in range(m):
        for slot in range(t):
            e = int(topk_ids[tok, slot])
            g = w13[e, :n] @ xd[tok]
            u = w13[e, n:] @ xd[tok]
            inter[tok, slot] = (_silu(g) * u).to(out_dtype).to(torch.float64)
    aq, asc = ref_quant(inter.reshape(m * t, n).to(out_dtype), fp8)
    ad = (aq * asc.to(torch.float64)).reshape(m, t, n)
    out = torch.zeros(m, k, dtype=torch.float64)
    for tok in range(m):
        for slot in range(t):
            e = int(topk_ids[tok, slot])
            row = (w2[e] @ ad[tok, slot]) * float(topk_w[tok, slot])
            out[tok] += row.to(out_dtype).to(torch.float64)
    return out


def ref_moe_exact(x, w13_q, w13_s, w2_q, w2_s, topk_w, topk_ids):
    """Float64 MoE on dequantised weights and unquantised activations."""
    e_num, two_n, k = w13_q.shape
    n = two_n // 2
    w13 = w13_q.to(torch.float64) * w13_s.reshape(e_num, two_n, 1).to(torch.float64)
    w2 = w2_q.to(torch.float64) * w2_s.reshape(e_num, k, 1).to(torch.float64)
    xd = x.to(torch.float64)
    out = torch.zeros(x.shape[0], k, dtype=torch.float64)
    for tok in range(x.shape[0]):
        for slot in range(topk_ids.shape[1]):
            e = int(topk_ids[tok, slot])
            h = _silu(w13[e, :n] @ xd[tok]) * (w13[e, n:] @ xd[tok])
            out[tok] += float(topk_w[tok, slot]) * (w2[e] @ h)
    return out


def _rel_err(a, b):
    return ((a.to(torch.float64) - b).norm() / b.norm()).item()


# --------------------------------------------------------------------------------------
# Fake FlyDSL kernel module (documented contract, in torch)
# --------------------------------------------------------------------------------------
def unshuffle_ref(w_flat, experts, n, k):
    """Inverse of FlyDSL's (16, 16) B preshuffle, from make_weight_view's layout:
    (n, k) lives at n//16*16*K + k//16*256 + n%16*16 + k%16 inside an expert."""
    nn = torch.arange(n).reshape(n, 1)
    kk = torch.arange(k).reshape(1, k)
    offs = (nn // 16) * 16 * k + (kk // 16) * 256 + (nn % 16) * 16 + (kk % 16)
    per_expert = w_flat.reshape(experts, n * k)
    return per_expert[:, offs.reshape(-1)].reshape(experts, n, k)


class FakeFlyDSL:
    """compile_moe_gemm1 / compile_moe_gemm2 with FlyDSL's fp8 contract."""

    def __init__(self):
        self.compiled = []
        self.launches = []
        self.written = []

    def module(self, name):
        mod = types.ModuleType(name)
        mod.compile_moe_gemm1 = self.compile_moe_gemm1
        mod.compile_moe_gemm2 = self.compile_moe_gemm2
        return mod

    @staticmethod
    def _check_tiles(tile_m, tile_n, tile_k):
        assert tile_k in (128, 256)
        assert 64 <= tile_n <= 256 and tile_n % 64 == 0
        assert 16 <= tile_m <= 256 and tile_m % 16 == 0

    def compile_moe_gemm1(
        self,
        *,
        model_dim,
        inter_dim,
        experts,
        topk,
        tile_m,
        tile_n,
        tile_k,
        doweight_stage1,
        out_dtype="f16",
        in_dtype="fp8",
    ):
        cfg = dict(locals())
        cfg.pop("self")
        self._check_tiles(tile_m, tile_n, tile_k)
        assert model_dim % tile_k == 0 and (model_dim // tile_k) % 2 == 0
        assert inter_dim % min(max(tile_n, 64), 128) == 0
        assert out_dtype in ("f16", "bf16") and in_dtype == "fp8"
        self.compiled.append(("gemm1", cfg))
        return lambda *args: self._stage1(cfg, *args)

    def compile_moe_gemm2(
        self,
        *,
        model_dim,
        inter_dim,
        experts,
        topk,
        tile_m,
        tile_n,
        tile_k,
        doweight_stage2,
        out_dtype="f16",
        accumulate=True,
        in_dtype="fp8",
    ):
        cfg = dict(locals())
        cfg.pop("self")
        self._check_tiles(tile_m, tile_n, tile_k)
        assert inter_dim % tile_k == 0 and model_dim % tile_n == 0
        assert in_dtype == "fp8"
        assert out_dtype in (("f16", "bf16", "f32") if accumulate else ("f16", "bf16"))
        self.compiled.append(("gemm2", cfg))
        return lambda *args: self._stage2(cfg, *args)

    @staticmethod
    def _check_routing(cfg, sorted_ids, eids, sorted_w, num_valid, size_eids):
        assert sorted_ids.dtype == torch.int32 and sorted_ids.dim() == 1
        assert eids.dtype == torch.int32 and eids.dim() == 1
        assert sorted_w.dtype == torch.float32 and sorted_w.shape == sorted_ids.shape
        assert num_valid.dtype == torch.int32 and num_valid.numel() >= 1
        assert size_eids == eids.numel() and isinstance(size_eids, int)
        return int(num_valid[0])

    def _rows(self, cfg, sorted_ids, eids, num_valid, size_eids, tokens):
        """Yield (sorted position, expert, token, slot) for every non-sentinel row
        of every block the kernel runs (b * BM < num_valid_ids[0])."""
        bm = cfg["tile_m"]
        for b in range(size_eids):
            if b * bm >= num_valid:
                continue
            e = int(eids[b])
            assert 0 <= e < cfg["experts"], f"block {b} runs with expert id {e}"
            for i in range(b * bm, (b + 1) * bm):
                packed = int(sorted_ids[i])
                tok, slot = packed & 0xFFFFFF, packed >> 24
                if tok >= tokens:  # sentinel: hardware OOB drops it
                    continue
                assert slot < cfg["topk"]
                yield i, e, tok, slot

    def _stage1(self, cfg, *args):
        assert len(args) == 14
        out, x, w, sx, sw, sorted_ids, eids, sorted_w, num_valid = args[:9]
        tokens, inter_in, k_in, size_eids, stream = args[9:]
        self.launches.append(("gemm1", tokens, inter_in, k_in, size_eids, stream))
        k, n, e_num, t = (
            cfg[key] for key in ("model_dim", "inter_dim", "experts", "topk")
        )
        assert (inter_in, k_in) == (n, k)
        assert x.dim() == 1 and x.dtype in FP8 and x.numel() == tokens * k
        assert w.dim() == 1 and w.dtype == x.dtype and w.numel() == e_num * 2 * n * k
        assert sx.dtype == torch.float32 and sx.shape == (tokens,)
        assert sw.dtype == torch.float32 and sw.shape == (e_num * 2 * n,)
        assert out.shape == (tokens, t, n) and out.dtype == OUT_DTYPES[cfg["out_dtype"]]
        nv = self._check_routing(cfg, sorted_ids, eids, sorted_w, num_valid, size_eids)
        wd = unshuffle_ref(w, e_num, 2 * n, k).to(torch.float64)
        wd = wd * sw.reshape(e_num, 2 * n, 1).to(torch.float64)
        xd = x.reshape(tokens, k).to(torch.float64) * sx.reshape(tokens, 1)
        written = []
        for i, e, tok, slot in self._rows(cfg, sorted_ids, eids, nv, size_eids, tokens):
            g = wd[e, :n] @ xd[tok]
            u = wd[e, n:] @ xd[tok]
            y = _silu(g) * u
            if cfg["doweight_stage1"]:
                y = y * float(sorted_w[i])
            out[tok, slot] = y.to(out.dtype)
            written.append((tok, slot))
        self.written.append(("gemm1", sorted(written)))

    def _stage2(self, cfg, *args):
        assert len(args) == 14
        out, x, w, sx, sw, sorted_ids, eids, sorted_w, num_valid = args[:9]
        tokens, n_in, k_in, size_eids, stream = args[9:]
        self.launches.append(("gemm2", tokens, n_in, k_in, size_eids, stream))
        kdim, n, e_num, t = (
            cfg[key] for key in ("model_dim", "inter_dim", "experts", "topk")
        )
        assert (n_in, k_in) == (kdim, n)
        assert x.dim() == 1 and x.dtype in FP8 and x.numel() == tokens * t * n
        assert w.dim() == 1 and w.dtype == x.dtype and w.numel() == e_num * kdim * n
        assert sx.dtype == torch.float32 and sx.shape == (tokens * t,)
        assert sw.dtype == torch.float32 and sw.shape == (e_num * kdim,)
        assert out.dtype == OUT_DTYPES[cfg["out_dtype"]]
        if cfg["accumulate"]:
            assert out.shape == (tokens, kdim)
        else:
            assert out.shape == (tokens * t, kdim)
        nv = self._check_routing(cfg, sorted_ids, eids, sorted_w, num_valid, size_eids)
        wd = unshuffle_ref(w, e_num, kdim, n).to(torch.float64)
        wd = wd * sw.reshape(e_num, kdim, 1).to(torch.float64)
        a = x.reshape(tokens * t, n).to(torch.float64) * sx.reshape(-1, 1)
        written = []
        for i, e, tok, slot in self._rows(cfg, sorted_ids, eids, nv, size_eids, tokens):
            y = wd[e] @ a[tok * t + slot]
            if cfg["doweight_stage2"]:
                y = y * float(sorted_w[i])
            if cfg["accumulate"]:
                out[tok] += y.to(out.dtype)
            else:
                out[tok * t + slot] = y.to(out.dtype)
            written.append((tok, slot))
        self.written.append(("gemm2", sorted(written)))


def _install(monkeypatch, fake, path):
    parts = path.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if not isinstance(sys.modules.get(parent), types.ModuleType):
            pkg = types.ModuleType(parent)
            pkg.__path__ = []
            monkeypatch.setitem(sys.modules, parent, pkg)
    monkeypatch.setitem(sys.modules, path, fake.module(path))


@pytest.fixture
def fake_flydsl(monkeypatch):
    fake = FakeFlyDSL()
    monkeypatch.setitem(sys.modules, LEGACY_PATH, None)
    _install(monkeypatch, fake, NEW_PATH)
    return fake


# --------------------------------------------------------------------------------------
# Problem generation
# --------------------------------------------------------------------------------------
def _quant_rows(w, fp8):
    fp8_max = torch.finfo(fp8).max
    scale = w.abs().amax(dim=-1, keepdim=True) / fp8_max
    return (w / scale).to(fp8), scale.squeeze(-1).to(torch.float32)


def _problem(m, k, n, e, t, fp8, seed, dtype=torch.bfloat16, unique=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w13 = torch.randn(e, 2 * n, k, generator=g) / math.sqrt(k)
    w2 = torch.randn(e, k, n, generator=g) / math.sqrt(n)
    w13_q, w13_s = _quant_rows(w13, fp8)
    w2_q, w2_s = _quant_rows(w2, fp8)
    if unique:
        scores = torch.rand(m, e, generator=g)
        vals, ids = torch.topk(scores, t, dim=1)
        topk_w = torch.softmax(vals, dim=1)
    else:
        ids = torch.randint(0, e, (m, t), generator=g)
        topk_w = torch.rand(m, t, generator=g)
    return x, w13_q, w13_s, w2_q, w2_s, topk_w.to(torch.float32), ids.to(torch.int32)


# --------------------------------------------------------------------------------------
# Import / availability
# --------------------------------------------------------------------------------------
def test_import_without_flydsl_and_clear_error(no_flydsl):
    mod = _load_module()
    assert mod.flydsl_moe_available() is False
    assert NEW_PATH in mod.flydsl_moe_import_error()
    x, w13, s13, w2, s2, tw, ids = _problem(3, 256, 128, 4, 2, FP8[0], 0)
    with pytest.raises(RuntimeError, match="FlyDSL"):
        mod.flydsl_fp8_moe(x, w13, w2, tw, ids, w13_scale=s13, w2_scale=s2)


def test_module_imports_only_torch_and_stdlib():
    import ast

    tree = ast.parse(MODULE_PATH.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            top.add((node.module or "").split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert top - stdlib == {"torch"}, top


def test_availability_is_cached(monkeypatch, fake_flydsl):
    mod = _load_module()
    assert mod.flydsl_moe_available() is True
    assert mod.flydsl_moe_import_error() is None
    monkeypatch.setitem(sys.modules, NEW_PATH, None)
    assert mod.flydsl_moe_available() is True


def test_legacy_module_path(monkeypatch):
    fake = FakeFlyDSL()
    monkeypatch.setitem(sys.modules, NEW_PATH, None)
    _install(monkeypatch, fake, LEGACY_PATH)
    mod = _load_module()
    assert mod.flydsl_moe_available()
    x, w13, s13, w2, s2, tw, ids = _problem(2, 256, 128, 4, 2, FP8[1], 1)
    mod.flydsl_fp8_moe(
        x,
        mod.shuffle_weight_fp8(w13),
        mod.shuffle_weight_fp8(w2),
        tw,
        ids,
        w13_scale=s13,
        w2_scale=s2,
    )
    assert [c[0] for c in fake.compiled] == ["gemm1", "gemm2"]


def test_new_module_path_preferred(monkeypatch):
    new, old = FakeFlyDSL(), FakeFlyDSL()
    _install(monkeypatch, new, NEW_PATH)
    _install(monkeypatch, old, LEGACY_PATH)
    mod = _load_module()
    x, w13, s13, w2, s2, tw, ids = _problem(2, 256, 128, 4, 2, FP8[0], 2)
    mod.flydsl_fp8_moe(x, w13, w2, tw, ids, w13_scale=s13, w2_scale=s2)
    assert len(new.compiled) == 2 and not old.compiled


# --------------------------------------------------------------------------------------
# Sorting
# --------------------------------------------------------------------------------------
SORT_CASES = [
    # m, experts, top_k, block, unique experts per token
    (1, 8, 2, 16, True),  # single token, most experts empty
    (1, 4, 1, 32, True),
    (37, 16, 4, 16, True),
    (5, 64, 6, 32, True),  # many experts with no tokens
    (200, 8, 2, 64, True),  # experts spanning several blocks
    (64, 1, 1, 16, True),  # all tokens on one expert, exact multiple of block
    (23, 6, 3, 16, False),  # duplicates inside a token as well as across tokens
    (0, 4, 2, 16, True),  # no tokens
]


@pytest.mark.parametrize("m,e,t,block,unique", SORT_CASES)
def test_sorting_matches_loop_reference(m, e, t, block, unique):
    mod = _load_module()
    g = torch.Generator().manual_seed(m * 131 + e)
    if unique:
        ids = torch.topk(torch.rand(m, e, generator=g), t, dim=1).indices
    else:
        ids = torch.randint(0, e, (m, t), generator=g)
    wts = torch.rand(m, t, generator=g)
    got = mod.moe_sorting_torch(ids.to(torch.int32), wts, e, block)
    ref = ref_sorting(ids, wts, e, block)
    for name, a, b in zip(("ids", "weights", "experts", "num_valid"), got, ref):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name


def test_sorting_detects_wrong_encoding():
    """The comparison above is strict: swapping token and slot fields fails it."""
    mod = _load_module()
    ids = torch.tensor([[0, 1], [1, 2], [2, 0]])
    wts = torch.rand(3, 2)
    got = mod.moe_sorting_torch(ids, wts, 3, 16)
    ref = ref_sorting(ids, wts, 3, 16)
    swapped = ((got.sorted_token_ids & 0xFFFFFF) << 24) | (got.sorted_token_ids >> 24)
    assert not torch.equal(swapped, ref[0])
    assert torch.equal(got.sorted_token_ids, ref[0])


def test_sorting_int64_ids_and_bf16_weights():
    mod = _load_module()
    ids = torch.tensor([[3, 1], [1, 1], [0, 3]], dtype=torch.int64)
    wts = torch.rand(3, 2).to(torch.bfloat16)
    got = mod.moe_sorting_torch(ids, wts, 5, 16)
    ref = ref_sorting(ids, wts.float(), 5, 16)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def _forbid_host_reads(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("host read of a tensor value")

    for attr in ("item", "tolist", "__bool__", "__int__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, boom)


def test_sorting_and_quant_do_not_read_tensor_values_on_host(monkeypatch):
    mod = _load_module()
    ids = torch.randint(0, 8, (9, 2))
    wts = torch.rand(9, 2)
    x = torch.randn(9, 64).to(torch.bfloat16)
    _forbid_host_reads(monkeypatch)
    mod.moe_sorting_torch(ids, wts, 8, 16)
    mod.per_token_quant_fp8(x, torch.float8_e4m3fn)
    monkeypatch.undo()


def test_sorting_rejects_bad_input():
    mod = _load_module()
    with pytest.raises(ValueError):
        mod.moe_sorting_torch(torch.zeros(4, dtype=torch.int32), torch.zeros(4), 2, 16)
    with pytest.raises(ValueError):
        mod.moe_sorting_torch(
            torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3), 2, 16
        )


# --------------------------------------------------------------------------------------
# Quantisation and weight layout
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fp8", FP8)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_per_token_quant_matches_reference(fp8, dtype):
    mod = _load_module()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 96, generator=g) * torch.tensor([1e-3, 1, 30, 0, 5, 1]).reshape(
        6, 1
    )
    x[5, 17] = 500.0  # one outlier dominates the row's scale
    x = x.to(dtype)
    q, s = mod.per_token_quant_fp8(x, fp8)
    assert q.dtype == fp8 and q.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == (6, 1)
    q_ref, s_ref = ref_quant(x, fp8)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.to(torch.float64), q_ref)
    assert torch.equal(s[3], torch.ones(1))  # all-zero row
    assert q.to(torch.float32).abs().amax() == torch.finfo(fp8).max


def test_per_token_quant_3d_and_bad_dtype():
    mod = _load_module()
    x = torch.randn(2, 3, 32)
    q, s = mod.per_token_quant_fp8(x, torch.float8_e4m3fnuz)
    assert s.shape == (2, 3, 1)
    q_ref, s_ref = ref_quant(x, torch.float8_e4m3fnuz)
    assert torch.equal(q.to(torch.float64), q_ref) and torch.equal(s, s_ref)
    with pytest.raises(ValueError, match="fp8_dtype"):
        mod.per_token_quant_fp8(x, torch.float8_e5m2)


def test_shuffle_weight_layout():
    mod = _load_module()
    e, n, k = 2, 32, 64
    w = torch.randint(-100, 100, (e, n, k), dtype=torch.int8)
    shuffled = mod.shuffle_weight_fp8(w)
    assert shuffled.shape == w.shape
    flat = shuffled.reshape(e, -1)
    for ex in range(e):
        for row in range(n):
            for col in range(k):
                off = (row // 16) * 16 * k + (col // 16) * 256 + (row % 16) * 16
                assert flat[ex, off + col % 16] == w[ex, row, col]
    assert torch.equal(unshuffle_ref(shuffled.reshape(-1), e, n, k), w)
    with pytest.raises(ValueError):
        mod.shuffle_weight_fp8(torch.zeros(8, 64, dtype=torch.int8))


# --------------------------------------------------------------------------------------
# GEMM glue against the fake FlyDSL kernels
# --------------------------------------------------------------------------------------
MOE_CASES = [
    # m, k, n, experts, top_k, fp8, stage2_mode, out dtype
    (1, 256, 128, 6, 2, torch.float8_e4m3fnuz, "reduce", torch.bfloat16),
    (19, 256, 128, 6, 2, torch.float8_e4m3fn, "reduce", torch.bfloat16),
    (19, 256, 128, 6, 2, torch.float8_e4m3fnuz, "atomic", torch.float16),
    (7, 512, 384, 16, 3, torch.float8_e4m3fn, "atomic", torch.bfloat16),
]


@pytest.mark.parametrize("m,k,n,e,t,fp8,mode,dtype", MOE_CASES)
def test_flydsl_fp8_moe_vs_references(fake_flydsl, m, k, n, e, t, fp8, mode, dtype):
    mod = _load_module()
    x, w13, s13, w2, s2, tw, ids = _problem(m, k, n, e, t, fp8, seed=m + e, dtype=dtype)
    out = mod.flydsl_fp8_moe(
        x,
        mod.shuffle_weight_fp8(w13),
        mod.shuffle_weight_fp8(w2),
        tw,
        ids,
        w13_scale=s13,
        w2_scale=s2,
        fp8_dtype=fp8,
        stage2_mode=mode,
    )
    assert out.shape == x.shape and out.dtype == dtype

    # Contract-level checks on what reached the kernels.
    (s1_name, c1), (s2_name, c2) = fake_flydsl.compiled
    assert (s1_name, s2_name) == ("gemm1", "gemm2")
    assert c1["doweight_stage1"] is False and c2["doweight_stage2"] is True
    assert (c1["model_dim"], c1["inter_dim"], c1["experts"], c1["topk"]) == (k, n, e, t)
    assert c2["accumulate"] is (mode == "atomic")
    assert c2["out_dtype"] == ("f32" if mode == "atomic" else c1["out_dtype"])
    every_pair = sorted((tok, s) for tok in range(m) for s in range(t))
    assert fake_flydsl.written == [("gemm1", every_pair), ("gemm2", every_pair)]
    assert all(launch[-1] is None for launch in fake_flydsl.launches)  # CPU stream

    emulated = ref_moe_emulated(x, w13, s13, w2, s2, tw, ids, fp8, dtype)
    assert _rel_err(out, emulated) < 1e-2
    # Against the unquantised-activation float64 MoE: two dynamic e4m3 roundings of
    # the activations (3 mantissa bits, relative step <= 2**-4, RMS about 2**-4/sqrt(12)
    # per element after scaling) give a few percent; 0.08 leaves margin while a
    # wrong routing, scale or gate/up order is off by O(1).
    exact = ref_moe_exact(x, w13, s13, w2, s2, tw, ids)
    err = _rel_err(out, exact)
    assert err < 0.08
    wrong = ref_moe_exact(x, w13, s13, w2, s2, tw, (ids + 1) % e)
    assert _rel_err(out, wrong) > 4 * max(err, 0.02)


def test_unshuffled_weights_and_duplicates(fake_flydsl):
    mod = _load_module()
    fp8 = torch.float8_e4m3fnuz
    x, w13, s13, w2, s2, tw, ids = _problem(11, 256, 128, 3, 3, fp8, 5, unique=False)
    out = mod.flydsl_fp8_moe(
        x, w13, w2, tw, ids, w13_scale=s13, w2_scale=s2, weights_preshuffled=False
    )
    emulated = ref_moe_emulated(x, w13, s13, w2, s2, tw, ids, fp8, x.dtype)
    assert _rel_err(out, emulated) < 1e-2


def test_block_m_and_tile_overrides(fake_flydsl):
    mod = _load_module()
    fp8 = torch.float8_e4m3fn
    x, w13, s13, w2, s2, tw, ids = _problem(40, 512, 256, 4, 2, fp8, 9)
    out = mod.flydsl_fp8_moe(
        x,
        mod.shuffle_weight_fp8(w13),
        mod.shuffle_weight_fp8(w2),
        tw,
        ids,
        w13_scale=s13,
        w2_scale=s2,
        block_m=32,
        tile_n1=256,
        tile_k1=256,
        tile_n2=64,
        tile_k2=256,
    )
    (_, c1), (_, c2) = fake_flydsl.compiled
    assert (c1["tile_m"], c1["tile_n"], c1["tile_k"]) == (32, 256, 256)
    assert (c2["tile_m"], c2["tile_n"], c2["tile_k"]) == (32, 64, 256)
    emulated = ref_moe_emulated(x, w13, s13, w2, s2, tw, ids, fp8, x.dtype)
    assert _rel_err(out, emulated) < 1e-2


def test_default_block_m_follows_rows_per_expert(fake_flydsl):
    mod = _load_module()
    fp8 = torch.float8_e4m3fn
    for m, expected in ((2, 16), (48, 32), (100, 64)):
        x, w13, s13, w2, s2, tw, ids = _problem(m, 256, 128, 2, 1, fp8, m)
        mod.flydsl_fp8_moe(x, w13, w2, tw, ids, w13_scale=s13, w2_scale=s2)
        assert fake_flydsl.compiled[-1][1]["tile_m"] == expected


@pytest.mark.parametrize("layout", ["per_tensor", "per_shard", "per_channel_3d"])
def test_weight_scale_layouts(fake_flydsl, layout):
    mod = _load_module()
    fp8 = torch.float8_e4m3fnuz
    e, n, k = 4, 128, 256
    x, w13, _, w2, _, tw, ids = _problem(9, k, n, e, 2, fp8, 3)
    g = torch.Generator().manual_seed(11)
    if layout == "per_tensor":
        s13 = torch.rand(e, generator=g) / 100 + 1e-3
        s2 = torch.rand(e, 1, generator=g) / 100 + 1e-3
        s13_full = s13.reshape(e, 1).expand(e, 2 * n)
        s2_full = s2.reshape(e, 1).expand(e, k)
    elif layout == "per_shard":  # separate w1 / w3 per-tensor scales
        s13 = torch.rand(e, 2, generator=g) / 100 + 1e-3
        s2 = torch.rand(e, generator=g) / 100 + 1e-3
        s13_full = torch.cat([s13[:, :1].expand(e, n), s13[:, 1:].expand(e, n)], dim=1)
        s2_full = s2.reshape(e, 1).expand(e, k)
    else:
        s13 = torch.rand(e, 2 * n, 1, generator=g) / 100 + 1e-3
        s2 = torch.rand(e, k, 1, generator=g) / 100 + 1e-3
        s13_full, s2_full = s13.reshape(e, 2 * n), s2.reshape(e, k)
    out = mod.flydsl_fp8_moe(
        x, w13, w2, tw, ids, w13_scale=s13, w2_scale=s2, weights_preshuffled=False
    )
    emulated = ref_moe_emulated(x, w13, s13_full, w2, s2_full, tw, ids, fp8, x.dtype)
    assert _rel_err(out, emulated) < 1e-2


def test_unsupported_configurations(fake_flydsl):
    mod = _load_module()
    fp8 = torch.float8_e4m3fn
    e, n, k = 4, 128, 256
    x, w13, s13, w2, s2, tw, ids = _problem(5, k, n, e, 2, fp8, 4)
    kw = {"w13_scale": s13, "w2_scale": s2}
    block13 = torch.ones(e, 2 * n // 128, k // 128)
    with pytest.raises(ValueError, match="block"):
        mod.flydsl_fp8_moe(x, w13, w2, tw, ids, w13_scale=block13, w2_scale=s2)
    with pytest.raises(ValueError, match="w2_scale"):
        mod.flydsl_fp8_moe(x, w13, w2, tw, ids, w13_scale=s13, w2_scale=torch.ones(3))
    with pytest.raises(ValueError, match="must both be"):
        mod.flydsl_fp8_moe(x, w13, w2, tw, ids, fp8_dtype=torch.float8_e4m3fnuz, **kw)
    with pytest.raises(ValueError, match="fp8_dtype"):
        mod.flydsl_fp8_moe(x, w13.view(torch.int8), w2.view(torch.int8), tw, ids, **kw)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        mod.flydsl_fp8_moe(x.float(), w13, w2, tw, ids, **kw)
    with pytest.raises(ValueError, match="silu"):
        mod.flydsl_fp8_moe(x, w13, w2, tw, ids, activation="gelu", **kw)
    with pytest.raises(ValueError, match="stage2_mode"):
        mod.flydsl_fp8_moe(x, w13, w2, tw, ids, stage2_mode="fast", **kw)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        mod.flydsl_fp8_moe(x, w13, w2[:, :, :64], tw, ids, **kw)
    x3, w13_3, s13_3, w2_3, s2_3, tw3, ids3 = _problem(5, 384, n, e, 2, fp8, 4)
    with pytest.raises(ValueError, match="hidden_size=384"):
        mod.flydsl_fp8_moe(x3, w13_3, w2_3, tw3, ids3, w13_scale=s13_3, w2_scale=s2_3)
    assert fake_flydsl.compiled == []


def test_unsupported_reason():
    mod = _load_module()
    ok = {
        "hidden_size": 7168,
        "intermediate_size": 256,
        "num_experts": 256,
        "w13_scale_shape": (256, 512),
        "w2_scale_shape": (256, 7168, 1),
        "fp8_dtype": torch.float8_e4m3fnuz,
    }
    assert mod.flydsl_fp8_moe_unsupported_reason(**ok) is None
    assert (
        mod.flydsl_fp8_moe_unsupported_reason(**{**ok, "w13_scale_shape": (256, 2)})
        is None
    )
    assert "block" in mod.flydsl_fp8_moe_unsupported_reason(
        **{**ok, "w13_scale_shape": (256, 4, 56), "w2_scale_shape": (256, 56, 2)}
    )
    assert "hidden_size" in mod.flydsl_fp8_moe_unsupported_reason(
        **{**ok, "hidden_size": 384, "w2_scale_shape": (256, 384)}
    )
    assert "silu" in mod.flydsl_fp8_moe_unsupported_reason(**ok, activation="gelu")
    assert "e4m3" in mod.flydsl_fp8_moe_unsupported_reason(
        **{**ok, "fp8_dtype": torch.float8_e5m2}
    )


def test_zero_tokens(fake_flydsl):
    mod = _load_module()
    x, w13, s13, w2, s2, tw, ids = _problem(0, 256, 128, 4, 2, FP8[0], 0)
    out = mod.flydsl_fp8_moe(x, w13, w2, tw, ids, w13_scale=s13, w2_scale=s2)
    assert out.shape == (0, 256)
