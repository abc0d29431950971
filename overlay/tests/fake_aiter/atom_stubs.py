# SPDX-License-Identifier: MIT
"""What an ATOM module needs around it to be imported on a CPU without GPUs:
the ``atom`` package without its heavy ``__init__``, an ``atom.config`` with the
names attention modules import, and stand-ins for optional native packages.
ATOM's tests/conftest.py does most of this itself; ``prepare`` adds what is
missing and works without that conftest too (the project's differential tests).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from unittest.mock import MagicMock

import torch

CONFIG = types.SimpleNamespace(
    kv_cache_block_size=16, torch_dtype=torch.bfloat16, max_model_len=4096
)


def _placeholder(name: str) -> type:
    return type(name, (), {"__init__": lambda self, *a, **k: None})


def prepare(atom_root: str | Path | None = None) -> None:
    """Make ``import atom.<...>`` work for attention modules of ``atom_root``."""
    if atom_root is not None:
        root = str(Path(atom_root).resolve())
        package = types.ModuleType("atom")
        package.__path__ = [str(Path(root) / "atom")]
        sys.modules["atom"] = package
        for name in [
            n for n in sys.modules if n.startswith("atom.") and n != "atom.config"
        ]:
            del sys.modules[name]
        if root not in sys.path:
            sys.path.insert(0, root)
    for name in ("zmq", "zmq.asyncio", "xxhash"):
        top = name.split(".")[0]
        stubbed = isinstance(sys.modules.get(top), MagicMock)
        if name not in sys.modules and (
            stubbed or importlib.util.find_spec(top) is None
        ):
            sys.modules[name] = MagicMock()
    if "atom.utils.custom_register" not in sys.modules:
        register = types.ModuleType("atom.utils.custom_register")
        register.direct_register_custom_op = lambda **kwargs: None
        sys.modules["atom.utils.custom_register"] = register
    config = sys.modules.get("atom.config")
    if config is None:
        config = types.ModuleType("atom.config")
        sys.modules["atom.config"] = config
    for name in (
        "Config",
        "KVCacheTensor",
        "ParallelConfig",
        "QuantizationConfig",
        "CompilationConfig",
        "SpeculativeConfig",
    ):
        if not hasattr(config, name):
            setattr(config, name, _placeholder(name))
    if not hasattr(config, "get_current_atom_config"):
        config.get_current_atom_config = lambda: CONFIG
