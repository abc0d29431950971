# SPDX-License-Identifier: MIT
"""The ATOM_CK_FREE switch and the CK detection in atom.utils.envs."""

import fake_aiter
import pytest
from fake_aiter import atom_stubs


@pytest.fixture
def envs(monkeypatch):
    for name in (
        "ATOM_CK_FREE",
        "ATOM_USE_TRITON_MLA_DECODE",
        "ATOM_USE_FLYDSL_MOE",
        "AITER_FORCE_TRITON_ATTN",
    ):
        monkeypatch.delenv(name, raising=False)
    atom_stubs.prepare()
    from atom.utils import envs

    envs.aiter_has_ck.cache_clear()
    yield envs
    envs.aiter_has_ck.cache_clear()
    fake_aiter.uninstall()


@pytest.mark.parametrize(
    "name",
    [
        "ATOM_CK_FREE",
        "ATOM_USE_TRITON_MLA_DECODE",
        "ATOM_USE_FLYDSL_MOE",
        "AITER_FORCE_TRITON_ATTN",
    ],
)
def test_switches_default_off_and_read_lazily(envs, monkeypatch, name):
    assert getattr(envs, name) is False
    monkeypatch.setenv(name, "1")
    assert getattr(envs, name) is True


def test_ck_present_flag_off_is_not_ck_free(envs):
    fake_aiter.install(ck=True)
    assert envs.aiter_has_ck() and not envs.ck_free_mode()


def test_flag_on_is_ck_free(envs, monkeypatch):
    fake_aiter.install(ck=True)
    monkeypatch.setenv("ATOM_CK_FREE", "1")
    assert envs.ck_free_mode()


def test_aiter_without_ck_is_ck_free(envs):
    # as a real CK-free build: the CK entry point is exported, and fails when called
    fake = fake_aiter.install(ck=False)
    assert callable(fake.modules["aiter"].flash_attn_varlen_func)
    with pytest.raises(RuntimeError, match="CK module"):
        fake.modules["aiter"].flash_attn_varlen_func()
    assert not envs.aiter_has_ck() and envs.ck_free_mode()


def test_ck_enabled_but_without_ck_sources_or_prebuilt_module_is_ck_free(envs):
    # ENABLE_CK left at 1 in the environment of an AITER built with ENABLE_CK=0
    fake = fake_aiter.install(ck=False)
    fake.modules["aiter.jit.core"].ENABLE_CK = True
    assert not envs.aiter_has_ck()


def test_an_aiter_before_enable_ck_with_ck_sources_has_ck(envs):
    fake = fake_aiter.install(ck=True)
    del fake.modules["aiter.jit.core"].ENABLE_CK
    assert envs.aiter_has_ck()


def test_a_prebuilt_ck_attention_module_is_ck_without_sources(envs):
    fake = fake_aiter.install(ck=True)
    fake.modules["aiter.jit.core"].CK_DIR = "/nonexistent/ck"
    assert envs.aiter_has_ck()
    envs.aiter_has_ck.cache_clear()
    fake_aiter.uninstall()
    fake = fake_aiter.install(ck=False)
    fake.modules["aiter.jit.core"].ENABLE_CK = True
    assert not envs.aiter_has_ck()  # neither sources nor the module


def test_detection_is_cached(envs):
    fake_aiter.install(ck=True)
    assert envs.aiter_has_ck()
    fake_aiter.install(ck=False)
    assert envs.aiter_has_ck()  # checked once
    envs.aiter_has_ck.cache_clear()
    assert not envs.aiter_has_ck()


def test_enable_ck_flag_alone_means_no_ck(envs):
    fake = fake_aiter.install(ck=True)
    fake.modules["aiter.jit.core"].ENABLE_CK = False
    assert not envs.aiter_has_ck()
