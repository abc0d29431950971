"""The overlay modules the AITER tests use, loaded by path (in ATOM they live in its
package tree once applied)."""

from __future__ import annotations

from tests.tools import load_overlay

__all__ = ["contracts", "kv_cache_asm", "load_overlay"]


def contracts():
    """The stand-ins: ``overlay/tests/fake_aiter/contracts.py``."""
    return load_overlay("tests/fake_aiter/contracts.py", "atom_ckfree_aiter_contracts")


def kv_cache_asm():
    """The ASM-layout cache writer, built for the Triton interpreter."""
    return load_overlay("atom/model_ops/kv_cache_asm.py", "atom_ckfree_kv_cache_asm")
