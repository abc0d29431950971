"""Config files of the Triton FP8 MoE pipeline: schema, buckets and the choice of
configs for a device without files (nearest tuned device), on the CPU."""

from __future__ import annotations

import json
import shutil

import pytest

try:  # tests/ is a package in this repository; also runnable as loose files
    from .moe_reference import load_triton_moe
except ImportError:
    from moe_reference import load_triton_moe

tm = load_triton_moe("atom_ckfree_triton_moe_interp", interpret=True)

BLOCK = (128, 128)
# (E, N, K, block_shape) of the benchmark's shapes.
SHAPES = [
    (256, 256, 7168, BLOCK),
    (256, 2048, 7168, BLOCK),
    (128, 768, 2048, BLOCK),
    (8, 14336, 4096, None),
]
H100 = "NVIDIA H100 80GB HBM3"


def _files():
    return sorted(tm.CONFIG_DIR.glob("E=*.json"))


def test_every_shipped_file_follows_the_schema_and_its_name():
    assert len(_files()) >= 12
    names = {
        tm.config_file_name(d.name, E, N, K, block_shape=bs)
        for d in [
            tm.known_device(n)
            for n in (H100, "AMD Instinct MI300X", "AMD Instinct MI355X")
        ]
        for E, N, K, bs in SHAPES
    }
    assert names <= {p.name for p in _files()}
    for path in _files():
        table = tm.load_config_file(path)
        assert table and all(
            c is None or isinstance(c, tm.MoeConfig) for c in table.values()
        )


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"bn1": 64, "blokc_m": 32}, ["unknown key", "blokc_m"]),
        ({"bn1": "64"}, ["bn1", "power of two"]),
        ({"bn1": 48}, ["bn1", "power of two"]),
        ({"quant_x": 1}, ["quant_x", "true or false"]),
        ({"reduce": "atomics"}, ["reduce"]),
        ({"s1": 0}, ["s1", ">= 1"]),
        ({"bm2": 24}, ["bm2"]),
        ([1, 2], ["object of knobs"]),
    ],
)
def test_schema_errors_name_file_bucket_and_key(tmp_path, entry, words):
    path = _write(tmp_path, "t.json", {"8": entry})
    with pytest.raises(tm.MoeConfigError) as err:
        tm.load_config_file(path)
    msg = str(err.value)
    assert str(path) in msg and "M bucket 8" in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("data", [{}, {"x": None}, {"0": None}, [1]])
def test_bad_tables(tmp_path, data):
    with pytest.raises(tm.MoeConfigError):
        tm.load_config_file(_write(tmp_path, "t.json", data))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(tm.MoeConfigError, match="JSON"):
        tm.load_config_file(bad)


def test_override_with_a_misspelt_knob_is_an_error():
    with pytest.raises(tm.MoeConfigError, match="quant_hh"):
        tm.MoeConfig.from_mapping({"quant_hh": True})


def _dir(tmp_path, devices, tables):
    """A config folder (new: the tables are cached per folder): devices.json of
    ``devices`` (DeviceInfo) and one file of
    (E=8, N=64, K=128, per-tensor) per device name in ``tables``."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "devices.json").write_text(
        json.dumps({tm.device_slug(d.name): d.__dict__ for d in devices})
    )
    for name, table in tables.items():
        _write(tmp_path, tm.config_file_name(name, 8, 64, 128), table)
    return tmp_path


A = tm.DeviceInfo("Card A", "sm_90", 132, 232448, True)
B = tm.DeviceInfo("Card B", "sm_80", 108, 166912, False)
R = tm.DeviceInfo("Radeon R", "gfx942", 304, 65536, True)


def _pick(device, m, cdir, **kw):
    return tm.select_moe_config(device, 8, 64, 128, m, config_dir=cdir, **kw)


def test_buckets_smallest_bound_wins_largest_covers_above_null_is_heuristic(tmp_path):
    cdir = _dir(
        tmp_path, [A], {"Card A": {"4": {"bn1": 16}, "15": None, "64": {"bn1": 32}}}
    )
    assert _pick(A, 1, cdir).config.bn1 == 16
    assert _pick(A, 4, cdir).config.bn1 == 16
    assert _pick(A, 16, cdir).config.bn1 == 32
    assert _pick(A, 5000, cdir).config.bn1 == 32
    heur = tm._heuristic_config(8, 64, 128, 9, 8)
    assert _pick(A, 9, cdir) == (heur, "heuristic")


def test_device_without_files_takes_the_nearest_tuned_device(tmp_path):
    tables = {"Card A": {"8": {"bn1": 16}}, "Card B": {"8": {"bn1": 32}}}
    cdir = _dir(tmp_path, [A, B], tables)
    # Same arch, fewer SMs: A. Another arch but closer SM count, no FP8: B.
    new_hopper = tm.DeviceInfo("Card C", "sm_90", 114, 232448, True)
    assert _pick(new_hopper, 8, cdir).source == tm.config_file_name(
        "Card A", 8, 64, 128
    )
    ampere = tm.DeviceInfo("Card D", "sm_86", 84, 101376, False)
    assert _pick(ampere, 8, cdir).config.bn1 == 32  # B: A's shared memory won't fit
    # The arch comes before the multiprocessor count.
    ada = tm.DeviceInfo("Card F", "sm_89", 128, 101376, True)
    cdir = _dir(
        tmp_path / "ada", [A, B, ada], dict(tables, **{"Card F": {"8": {"bn1": 64}}})
    )
    hopper_128 = tm.DeviceInfo("Card G", "sm_90", 128, 232448, True)
    assert _pick(hopper_128, 8, cdir).config.bn1 == 16
    # No tuned device of the vendor: the heuristic, not an NVIDIA table.
    assert _pick(R, 8, cdir).source == "heuristic"
    # A bare name only finds its own file.
    assert _pick("Card C", 8, cdir).source == "heuristic"
    assert _pick("Card B", 8, cdir).config.bn1 == 32


def test_static_scales_fall_back_to_the_dynamic_file(tmp_path):
    cdir = _dir(tmp_path, [A], {"Card A": {"8": {"bn1": 16}}})
    assert _pick(A, 8, cdir, static_scales=True).config.bn1 == 16
    _write(
        cdir,
        tm.config_file_name("Card A", 8, 64, 128, static_scales=True),
        {"8": {"bn1": 32}},
    )
    tm._nearest_file.cache_clear()  # files are read once per process
    assert _pick(A, 8, cdir, static_scales=True).config.bn1 == 32
    assert _pick(A, 8, cdir).config.bn1 == 16


def test_h200_without_its_files_takes_the_h100_tables(tmp_path):
    cdir = tmp_path / "configs"
    shutil.copytree(tm.CONFIG_DIR, cdir)
    for p in cdir.glob("*device_name=NVIDIA_H200,*"):
        p.unlink()
    h200 = tm.known_device("NVIDIA H200", cdir)
    for E, N, K, bs in SHAPES:
        for m in (1, 32, 8192):
            got = tm.select_moe_config(
                h200, E, N, K, m, block_shape=bs, config_dir=cdir
            )
            h100 = tm.select_moe_config(
                H100, E, N, K, m, block_shape=bs, config_dir=cdir
            )
            assert got == h100


@pytest.mark.parametrize(
    "device, file_device",
    [
        (
            tm.DeviceInfo("AMD Instinct MI300X", "gfx942", 304, 65536, True),
            "AMD Instinct MI300X",
        ),
        (
            tm.DeviceInfo("AMD Instinct MI325X", "gfx942", 304, 65536, True),
            "AMD Instinct MI300X",
        ),
        (
            tm.DeviceInfo("AMD Instinct MI355X", "gfx950", 256, 163840, True),
            "AMD Instinct MI355X",
        ),
        (
            tm.DeviceInfo("AMD Instinct MI350X", "gfx950", 256, 163840, True),
            "AMD Instinct MI355X",
        ),
        (tm.known_device("gfx942:sramecc+:xnack-"), "AMD Instinct MI300X"),
        (tm.known_device("gfx950"), "AMD Instinct MI355X"),
    ],
)
def test_rocm_devices_select_the_amd_entries(device, file_device):
    for E, N, K, bs in SHAPES:
        for m in (1, 100, 512, 8192):
            choice = tm.select_moe_config(device, E, N, K, m, block_shape=bs)
            assert choice.source == tm.config_file_name(
                file_device, E, N, K, block_shape=bs
            )
            assert not choice.config.tma2 and choice.config.persistent2 == 0


def _lds_bytes(c):
    # FP8 operand tiles held in shared memory (LDS) per pipeline stage: GEMM1
    # reads one x tile and the gate and up weight tiles, GEMM2 one h and one w2.
    g1 = c.s1 * (c.block_m * c.bk1 + 2 * c.bn1 * c.bk1)
    g2 = c.s2 * ((c.bm2 or c.block_m) * c.bk2 + c.bn2 * c.bk2)
    return max(g1, g2)


@pytest.mark.parametrize("arch", ["gfx942", "gfx950"])
def test_amd_entries_fit_the_lds(arch):
    device = tm.known_device(arch)
    assert device.smem_bytes == {"gfx942": 64 << 10, "gfx950": 160 << 10}[arch]
    for E, N, K, bs in SHAPES:
        path = tm.CONFIG_DIR / tm.config_file_name(device.name, E, N, K, block_shape=bs)
        for cfg in tm.load_config_file(path).values():
            assert _lds_bytes(cfg) <= device.smem_bytes


def test_every_config_file_is_in_series_4s_overlay():
    import tomlkit

    series = tm.CONFIG_DIR.parents[4] / "patches" / "04-moe-cascade" / "series.toml"
    overlay = set(tomlkit.parse(series.read_text())["overlay"])
    shipped = {
        str(p.relative_to(tm.CONFIG_DIR.parents[3]))
        for p in tm.CONFIG_DIR.glob("*.json")
    }
    assert shipped <= overlay


def test_tuner_writes_a_file_the_loader_reads_keeping_untuned_buckets(tmp_path):
    from tests.tools import load_file

    tune = load_file(tm.CONFIG_DIR.parents[4] / "benchmarks" / "tune_moe.py", "tune_t")
    cdir = tmp_path / "configs"
    shutil.copytree(tm.CONFIG_DIR, cdir)
    for p in cdir.glob("*device_name=NVIDIA_H200,*"):
        p.unlink()
    h200 = tm.known_device("NVIDIA H200", cdir)
    E, N, K = 8, 14336, 4096
    tuned_cfg = {"block_m": 32, "bn1": 128, "w1": 8, "quant_x": True, "chain2": True}
    tuned = {f"mixtral-static|{E}|{N}|{K}": {32: {"cfg": tuned_cfg, "ms": 1.0}}}
    before = {
        m: tm.select_moe_config(
            h200, E, N, K, m, static_scales=True, config_dir=cdir
        ).config
        for m in (1, 8, 31, 33, 100, 512, 8192)
    }
    (path,) = tune.write_config_files(tm, tuned, "NVIDIA H200", cdir, h200)
    assert path.name == tm.config_file_name("NVIDIA H200", E, N, K, static_scales=True)
    assert tm.load_config_file(path)[32] == tm.MoeConfig(**tuned_cfg)
    tm._nearest_file.cache_clear()  # files are read once per process
    after = tm.select_moe_config(h200, E, N, K, 32, static_scales=True, config_dir=cdir)
    assert after == (tm.MoeConfig(**tuned_cfg), path.name)
    for m, cfg in before.items():
        got = tm.select_moe_config(
            h200, E, N, K, m, static_scales=True, config_dir=cdir
        )
        assert got.config == cfg, m


def test_tuner_seeds_a_new_file_from_a_table_whose_first_bucket_is_null(tmp_path):
    # Qwen3's H100 table starts with a null bucket (M <= 2047: the heuristic):
    # the new H200 file must still carry the H100's large-M config.
    from tests.tools import load_file

    tune = load_file(tm.CONFIG_DIR.parents[4] / "benchmarks" / "tune_moe.py", "tune_t2")
    cdir = tmp_path / "configs"
    shutil.copytree(tm.CONFIG_DIR, cdir)
    for p in cdir.glob("*device_name=NVIDIA_H200,*"):
        p.unlink()
    h200 = tm.known_device("NVIDIA H200", cdir)
    E, N, K = 128, 768, 2048

    def pick(m):
        return tm.select_moe_config(
            h200, E, N, K, m, block_shape=BLOCK, config_dir=cdir
        )

    ms = (1, 8, 100, 511, 513, 2048, 8192, 20000)
    before = {m: pick(m).config for m in ms}
    tuned_cfg = {"block_m": 64, "bn2": 128, "quant_x": True, "quant_h": True}
    tuned = {f"qwen3-30b-a3b|{E}|{N}|{K}": {512: {"cfg": tuned_cfg}}}
    tune.write_config_files(tm, tuned, "NVIDIA H200", cdir, h200)
    tm._nearest_file.cache_clear()  # files are read once per process
    assert pick(512) == (
        tm.MoeConfig(**tuned_cfg),
        tm.config_file_name("NVIDIA H200", E, N, K, block_shape=BLOCK),
    )
    assert {m: pick(m).config for m in ms} == before
