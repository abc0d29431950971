"""GPU check and benchmark of the CK-free MLA prefill fallback and the prefill
block-table builder (series 2/3), against a naive per-sequence loop.

    python benchmarks/mla_prefill_bench.py --atom <ATOM tree with series 1-3>

64 sequences of mixed lengths; checks the batched results against the loop
(float64 reference for attention) and prints a markdown table naming the card.
The patched modules are imported under the fake ``aiter`` (the kernels measured
here are ours: torch SDPA and torch indexing).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "overlay" / "tests"))


def load_patched(tree: Path):
    import fake_aiter
    from fake_aiter import atom_stubs

    fake_aiter.install(ck=True)
    atom_stubs.prepare(tree)
    mods = {}
    for name in ("attention_mla", "attention_mha"):
        path = tree / "atom" / "model_ops" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"atom.model_ops.{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        mods[name] = module
    return mods["attention_mla"], mods["attention_mha"]


def mixed_lengths(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 1024, (n,), generator=g).tolist()
    lens[0], lens[1] = 0, 1  # an empty and a length-1 sequence
    return lens


def loop_attention(q, k, v, cu, scale):
    out = torch.empty(
        q.shape[0], q.shape[1], v.shape[-1], dtype=q.dtype, device=q.device
    )
    for b in range(cu.numel() - 1):
        s, e = int(cu[b]), int(cu[b + 1])
        if e > s:
            o = torch.nn.functional.scaled_dot_product_attention(
                q[s:e].transpose(0, 1),
                k[s:e].transpose(0, 1),
                v[s:e].transpose(0, 1),
                is_causal=True,
                scale=scale,
            )
            out[s:e] = o.transpose(0, 1)
    return out


def loop_block_table(cu, width):
    table = torch.zeros(cu.numel() - 1, width, dtype=torch.int32, device=cu.device)
    last = max(int(cu[-1]) - 1, 0)
    for b in range(cu.numel() - 1):
        start = int(cu[b])
        table[b] = torch.clamp(
            torch.arange(start, start + width, device=cu.device), max=last
        )
    return table


def timed(fn, repeat=10):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atom", default=os.environ.get("ATOM_CKFREE_PATCHED_TREE"))
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--heads", type=int, default=16)
    args = parser.parse_args()
    if not args.atom or not torch.cuda.is_available():
        print("needs --atom <patched ATOM tree> and a GPU", file=sys.stderr)
        return 2
    mla, mha = load_patched(Path(args.atom))
    dev = torch.device("cuda")
    lens = mixed_lengths(args.seqs)
    cu = torch.tensor(
        [0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=dev
    )
    t, h, scale = sum(lens), args.heads, 192**-0.5
    q = torch.randn(t, h, 192, device=dev, dtype=torch.bfloat16)
    k = torch.randn(t, h, 192, device=dev, dtype=torch.bfloat16)
    v = torch.randn(t, h, 128, device=dev, dtype=torch.bfloat16)
    m = max(lens)

    def batched():
        return mla.varlen_causal_attention(q, k, v, cu, cu, m, m, scale)

    def naive():
        return loop_attention(q, k, v, cu, scale)

    ref = loop_attention(q.double(), k.double(), v.double(), cu, scale)
    err = (batched().double() - ref).abs().max().item()
    table_ok = torch.equal(mha.prefill_block_table(cu, m), loop_block_table(cu, m))
    rows = [
        (
            "MLA prefill fallback (SDPA, batched)",
            timed(batched),
            timed(naive),
            f"max abs err {err:.3e}",
        ),
        (
            "prefill block table (size 1)",
            timed(lambda: mha.prefill_block_table(cu, m), 100),
            timed(lambda: loop_block_table(cu, m), 10),
            f"equal: {table_ok}",
        ),
    ]
    print(
        f"\n### {torch.cuda.get_device_name()} — {args.seqs} sequences, lengths 0..1023, {t} tokens\n"
    )
    print("| piece | batched ms | per-sequence loop ms | loop / batched | check |")
    print("|---|---|---|---|---|")
    for name, fast, slow, check in rows:
        print(f"| {name} | {fast:.3f} | {slow:.3f} | {slow / fast:.1f}x | {check} |")
    return 0 if err < 2e-2 and table_ok else 1


if __name__ == "__main__":
    sys.exit(main())
