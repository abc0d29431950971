# SPDX-License-Identifier: MIT
"""The MLA backend module imports under an AITER without CK and names the
patched MLAAttention."""

import fake_aiter
import pytest
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
