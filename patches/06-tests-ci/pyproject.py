"""pyproject.toml: register the `gpu` pytest marker (tests that need a GPU)."""

from atom_ckfree.edits import AddArrayItem

EDITS = [
    AddArrayItem(
        "pyproject.pytest-gpu-marker",
        table=("tool", "pytest", "ini_options"),
        key="markers",
        item='gpu: needs an AMD GPU with ROCm; CPU-only runs use -m "not gpu"',
        match="gpu:",
    ),
]
