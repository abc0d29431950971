"""Every series on ATOM main (2026-08-22): one series source serves both bases.
At main each series applies (or is obsolete there, with upstream's commit as the
evidence), re-applies as a no-op, and means what it means at the pin: the things
upstream renamed, moved or did its own way are found where they now are."""

from __future__ import annotations

import io
import json
import py_compile
import shutil

import pytest
from dockerfile_parse import DockerfileParser
from ruamel.yaml import YAML

from atom_ckfree.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def patched_main(main_template, tmp_path_factory):
    tree = tmp_path_factory.mktemp("patched-main") / "atom"
    shutil.copytree(main_template, tree, symlinks=True)
    assert main(["apply", "--atom", str(tree), "--series", "all", "--json"]) == 0
    return tree


def test_all_series_apply_at_main_and_again_as_a_no_op(patched_main, capsys):
    capsys.readouterr()
    assert main(["status", "--atom", str(patched_main), "--json"]) == 0
    states = [s["state"] for s in json.loads(capsys.readouterr().out)["series"]]
    assert states == ["applied"] * 7
    assert main(["apply", "--atom", str(patched_main), "--json"]) == 0
    outcomes = [s["outcome"] for s in json.loads(capsys.readouterr().out)["series"]]
    assert outcomes == ["already applied"] * 7


def test_every_changed_python_file_compiles(patched_main):
    for path in (
        "atom/model_ops/attention_mha.py",
        "atom/model_ops/attention_mla.py",
        "atom/model_ops/moe.py",
        "atom/utils/envs.py",
    ):
        py_compile.compile(str(patched_main / path), doraise=True)


def stages_declaring(path, name: str) -> list[str]:
    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    stage, found = None, []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stage = item["value"].split()[-1]
        elif item["instruction"] == "ARG" and item["value"].split("=")[0] == name:
            found.append(stage)
    return found


@pytest.mark.parametrize(
    "dockerfile", ["docker/Dockerfile", "docker/atom_release.dockerfile"]
)
def test_enable_ck_is_declared_in_the_stage_that_builds_aiter(patched_main, dockerfile):
    path = patched_main / dockerfile
    assert stages_declaring(path, "ENABLE_CK") == ["build_aiter"]
    text = path.read_text()
    assert "ENABLE_CK=$ENABLE_CK MAX_JOBS=$MAX_JOBS" in text
    assert 'if [ "$ENABLE_CK" = "1" ]; then' in text


def test_mha_hooks_land_in_paged_attention_impl_and_reuse_upstreams_switch(
    patched_main,
):
    mha = (patched_main / "atom/model_ops/attention_mha.py").read_text()
    assert "def rope_cache_ck_free(" in mha and mha.count("envs.ck_free_mode()") == 2
    # upstream's own switches serve: ATOM_FORCE_ATTN_TRITON, ATOM_USE_TRITON_MLA
    assert "AITER_FORCE_TRITON_ATTN" not in mha
    assert "if attn_metadata.block_tables is None:" in mha
    envs = (patched_main / "atom/utils/envs.py").read_text()
    assert '"AITER_FORCE_TRITON_ATTN"' not in envs
    assert '"ATOM_USE_TRITON_MLA_DECODE"' not in envs
    assert envs.count('"1" if ck_free_mode() else "0"') == 2


def test_mla_uses_upstreams_triton_backend_instead_of_a_route_of_its_own(patched_main):
    mla = (patched_main / "atom/model_ops/attention_mla.py").read_text()
    assert "_forward_decode_triton" not in mla and "use_triton_mla_decode" not in mla
    assert "varlen_causal_attention(" in mla  # the SDPA prefill fallback stays


def test_fp8_moe_reads_the_typed_config_and_sets_the_layout_per_mode(patched_main):
    moe = (patched_main / "atom/model_ops/moe.py").read_text()
    fp8 = moe[moe.index("class Fp8MoEMethod") : moe.index("class FusedMoE(")]
    assert "self.quant_config.get(" not in fp8
    assert "self.quant_config.is_dynamic" in fp8
    for method in (
        "_process_block_quant",
        "_process_channel_quant",
        "_process_tensor_quant",
    ):
        body = fp8[fp8.index(f"def {method}(") :]
        head = body[: body.index("\n    def ", 1)]
        assert "shuffle_weights = fp8_moe_weight_shuffle(self.moe_backend)" in head
    assert "MXFP8 (per_1x32) MoE runs on AITER's CK MoE only" in fp8


def test_gpu_jobs_stay_upstream_and_upstreams_actionlint_config_is_kept(
    patched_main, main_template
):
    jobs = YAML(typ="safe").load(
        (patched_main / ".github/workflows/atom-test.yaml").read_text()
    )["jobs"]
    for job in ("atom-test", "offline-smoke-test"):
        assert "github.repository == 'ROCm/ATOM'" in jobs[job]["if"]
    golden = [
        s
        for s in jobs["atom-test"]["steps"]
        if s.get("name") == "Compare output with golden outputs"
    ]
    assert golden[0]["if"] is False  # obsolete: upstream runs no simple inference
    ours = ".github/actionlint.yaml"
    assert (patched_main / ours).read_text() == (main_template / ours).read_text()
