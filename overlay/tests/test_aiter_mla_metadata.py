# SPDX-License-Identifier: MIT
"""The MLA backend module imports under an AITER without CK, and its paged KV
metadata buffers have the shapes the prefill and decode paths index."""

import random
import types

import fake_aiter
import numpy as np
import pytest
import torch
from fake_aiter import atom_stubs


@pytest.fixture(autouse=True)
def _uninstall():
    yield
    fake_aiter.uninstall()


@pytest.mark.parametrize("ck", [True, False])
def test_backend_imports_and_names_the_patched_impl(ck):
    fake_aiter.install(ck=ck)
    atom_stubs.prepare()
    import importlib

    import atom.model_ops.attention_mla as mla

    mla = importlib.reload(mla)
    import atom.model_ops.attentions.aiter_mla as backend

    backend = importlib.reload(backend)
    assert backend.AiterMLABackend.get_name() == "ROCM_AITER_MLA"
    assert backend.AiterMLABackend.get_impl_cls() is mla.MLAAttention
    assert hasattr(mla, "varlen_causal_attention")


# -- the paged KV metadata of a prefill batch (CK-free mode) -------------------


def load_backend(monkeypatch, ck=True, ck_free=False):
    monkeypatch.setenv("ATOM_CK_FREE", "1" if ck_free else "0")
    fake_aiter.install(ck=ck)
    atom_stubs.prepare()
    import importlib

    from atom.utils import envs

    envs.aiter_has_ck.cache_clear()
    import atom.model_ops.attention_mla as mla

    importlib.reload(mla)
    import atom.model_ops.attentions.aiter_mla as backend

    return importlib.reload(backend)


def reference(block_tables, context_lens, ratio):
    """kv_indptr / kv_indices / slot tables by a plain loop over sequences and tokens."""
    indptr, indices, slot_rows = [0], [], []
    for bt, n in zip(block_tables, context_lens):
        row = [bt[t // ratio] * ratio + t % ratio for t in range(n)]
        indices += row
        indptr.append(indptr[-1] + n)
        slot_rows.append(row)
    return indptr, indices, slot_rows


def random_batch(rng, bs, ratio, width):
    """Ragged block tables of distinct blocks; lengths include 0 and 1."""
    lens = [rng.choice([0, 1, rng.randint(1, width * ratio)]) for _ in range(bs)]
    blocks = rng.sample(range(1000), sum(-(-n // ratio) for n in lens))
    tables, at = [], 0
    for n in lens:
        k = -(-n // ratio)
        tables.append(blocks[at : at + k])
        at += k
    return tables, lens


def padded(tables, width):
    out = np.zeros((len(tables), width), dtype=np.int32)
    for i, bt in enumerate(tables):
        out[i, : len(bt)] = bt
    return out


@pytest.mark.parametrize("ratio", [1, 4, 16])
@pytest.mark.parametrize("seed", range(4))
def test_paged_kv_metadata_matches_a_plain_loop(monkeypatch, ratio, seed):
    load_backend(monkeypatch)
    from atom.model_ops import ck_free_mla

    rng = random.Random(seed * 31 + ratio)
    width = 6
    tables, lens = random_batch(rng, rng.randint(1, 9), ratio, width)
    ref_indptr, ref_indices, ref_rows = reference(tables, lens, ratio)

    bt_np = np.full((len(tables) + 2, width), 7, dtype=np.int32)  # stale rows
    ck_free_mla.fill_block_tables(bt_np, tables)
    np.testing.assert_array_equal(bt_np[: len(tables)], padded(tables, width))

    bt = torch.from_numpy(bt_np[: len(tables)])
    ctx = torch.tensor(lens, dtype=torch.int32)
    slots = ck_free_mla.block_table_slots(bt, ctx, ratio)
    assert slots.shape == (len(tables), width * ratio)
    for row, ref in zip(slots.tolist(), ref_rows):
        assert row[: len(ref)] == ref and set(row[len(ref) :]) <= {-1}

    indptr_buf = torch.full((32,), -5, dtype=torch.int32)
    indptr = ck_free_mla.paged_kv_indptr(ctx, indptr_buf)
    assert indptr.tolist() == ref_indptr

    indices_buf = torch.full((width * ratio * 10 + 1,), -5, dtype=torch.int32)
    indices = ck_free_mla.paged_kv_indices(slots, indptr, sum(lens), indices_buf)
    assert indices.dtype == torch.int32
    assert indices.tolist() == ref_indices
    assert set(indices_buf[sum(lens) :].tolist()) <= {-5}  # nothing written past


def test_fill_block_tables_of_an_empty_batch(monkeypatch):
    load_backend(monkeypatch)
    from atom.model_ops import ck_free_mla

    dst = np.ones((3, 4), dtype=np.int32)
    ck_free_mla.fill_block_tables(dst, [[], []])
    assert dst[:2].sum() == 0 and dst[2].sum() == 4


class Buffer:
    """CpuGpuBuffer on a CPU-only machine (no pinned memory)."""

    def __init__(self, *size):
        self.cpu = torch.zeros(*size, dtype=torch.int32)
        self.gpu = torch.zeros_like(self.cpu)
        self.np = self.cpu.numpy()

    def copy_to_gpu(self, n=None):
        if n is None:
            return self.gpu.copy_(self.cpu)
        return self.gpu[:n].copy_(self.cpu[:n])


def builder_and_batch(backend, monkeypatch, ratio, tables, lens):
    from atom.utils.forward_context import AttentionMetaData

    bs, width = len(tables), 8
    runner = types.SimpleNamespace(
        forward_vars={
            "block_tables": Buffer(16, width),
            "block_tables_converted": Buffer(16, width * ratio),
            "kv_indptr": Buffer(17),
            "kv_indices": Buffer(16 * width * ratio),
            "kv_last_page_lens": Buffer(16),
        }
    )
    runner.forward_vars["kv_last_page_lens"].gpu.fill_(0)
    builder = object.__new__(backend.AiterMLAMetadataBuilder)
    builder.model_runner, builder.block_ratio, builder.block_size = runner, ratio, 1
    builder.is_sparse, builder.device = False, torch.device("cpu")
    ctx = torch.tensor(lens, dtype=torch.int32)
    upstream = AttentionMetaData(context_lens=ctx, max_seqlen_q=max(lens))

    def common_prepare_prefill(self, batch):
        return upstream, torch.arange(sum(lens))

    monkeypatch.setattr(
        backend.CommonAttentionBuilder, "prepare_prefill", common_prepare_prefill
    )
    batch = types.SimpleNamespace(
        total_seqs_num_prefill=bs,
        total_tokens_num_prefill=sum(lens),
        context_lens=lens,
        block_tables=tables,
    )
    return builder, batch, upstream


TABLES = [[3, 9], [], [4], [11, 2, 6]]
LENS = [5, 0, 1, 9]


@pytest.mark.parametrize("ratio", [1, 4])
@pytest.mark.parametrize("ck,flag", [(True, True), (False, False)])
def test_ck_free_prefill_gets_paged_kv_metadata(monkeypatch, ratio, ck, flag):
    backend = load_backend(monkeypatch, ck=ck, ck_free=flag)
    lens = [min(n, len(bt) * ratio) for bt, n in zip(TABLES, LENS)]
    builder, batch, _ = builder_and_batch(backend, monkeypatch, ratio, TABLES, lens)
    meta, _ = builder.prepare_prefill(batch)
    ref_indptr, ref_indices, ref_rows = reference(TABLES, lens, ratio)
    assert meta.kv_indptr.tolist() == ref_indptr
    assert meta.kv_indices.tolist() == ref_indices
    np.testing.assert_array_equal(meta.block_tables.numpy(), padded(TABLES, 8))
    assert meta.kv_last_page_lens.tolist() == [1] * len(TABLES)
    if ratio > 1:
        for row, ref in zip(meta.block_tables_converted.tolist(), ref_rows):
            assert row[: len(ref)] == ref and set(row[len(ref) :]) <= {-1}
    else:
        assert meta.block_tables_converted is None


def test_flag_off_with_ck_leaves_upstream_metadata(monkeypatch):
    backend = load_backend(monkeypatch, ck=True, ck_free=False)
    builder, batch, upstream = builder_and_batch(backend, monkeypatch, 4, TABLES, LENS)
    before = dict(vars(upstream))
    meta, _ = builder.prepare_prefill(batch)
    assert meta is upstream and dict(vars(meta)) == before
    assert meta.kv_indices is None and meta.block_tables is None
    assert not builder.model_runner.forward_vars["kv_indptr"].gpu.any()


def test_no_host_sync_in_the_device_builders(monkeypatch):
    load_backend(monkeypatch)
    from atom.model_ops import ck_free_mla

    def refuse(*a, **k):
        raise AssertionError("host sync")

    bt = torch.tensor([[1, 2], [3, 0]], dtype=torch.int32)
    ctx = torch.tensor([7, 2], dtype=torch.int32)
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    slots = ck_free_mla.block_table_slots(bt, ctx, 4)
    indptr = ck_free_mla.paged_kv_indptr(ctx, torch.zeros(3, dtype=torch.int32))
    out = ck_free_mla.paged_kv_indices(
        slots, indptr, 9, torch.zeros(9, dtype=torch.int32)
    )
    monkeypatch.undo()
    assert out.tolist() == [4, 5, 6, 7, 8, 9, 10, 12, 13]
