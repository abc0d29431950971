"""Miniatures shared by the unit tests: a two-series project and a tiny ATOM repo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MANIFEST = Path(__file__).resolve().parents[2] / "patches" / "project.toml"

MODULE = """\
class Engine:
    def step(self, batch):
        if batch.kind == "prefill":
            mode = 1
        return mode
"""

SERIES_1 = """\
number = 1
slug = "first"
title = "Give step a default mode"
depends_on = []
description = "The default."
overlay = ["atom/extra.py"]

[edits]
"atom/engine.py" = "engine.py"
"""

EDITS_1 = """\
from atom_ckfree.edits import AddElse, if_test

EDITS = [
    AddElse("engine.default-mode", "Engine.step", if_test('batch.kind == "prefill"'), "mode = 0"),
]
"""

SERIES_2 = """\
number = 2
slug = "second"
title = "Log the mode"
depends_on = [1]
description = "Logging."

[edits]
"atom/engine.py" = "engine.py"
"""

EDITS_2 = """\
from atom_ckfree.edits import InsertStatements, stmt

EDITS = [
    InsertStatements("engine.log", "Engine.step", "print(mode)", before=stmt("return mode")),
]
"""


def git(cwd, *args) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "project"
    for folder, manifest, edits in (
        ("01-first", SERIES_1, EDITS_1),
        ("02-second", SERIES_2, EDITS_2),
    ):
        (root / "patches" / folder).mkdir(parents=True)
        (root / "patches" / folder / "series.toml").write_text(manifest)
        (root / "patches" / folder / "engine.py").write_text(edits)
    shutil.copy(MANIFEST, root / "patches" / "project.toml")
    (root / "overlay" / "atom").mkdir(parents=True)
    (root / "overlay" / "atom" / "extra.py").write_text("EXTRA = 1\n")
    monkeypatch.setenv("ATOM_CKFREE_ROOT", str(root))
    return root


@pytest.fixture
def atom(tmp_path) -> Path:
    tree = tmp_path / "atom-tree"
    (tree / "atom" / "model_engine").mkdir(parents=True)
    (tree / "atom" / "__init__.py").write_text("")
    (tree / "atom" / "model_engine" / "__init__.py").write_text("")
    (tree / "atom" / "engine.py").write_text(MODULE)
    (tree / "pyproject.toml").write_text('[project]\nname = "atom"\n')
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", "base")
    return tree
