"""atom-test.yaml: GPU jobs only in ROCm/ATOM (forks have no MI355 runners); golden
output comparison back on for every model that has a stored golden output."""

from atom_ckfree.edits import AddCondition, SetEntry, SwitchOn

STEPS = ("jobs", "atom", "steps")

EDITS = [
    AddCondition(
        "atom-test.gpu-only-upstream",
        ("jobs", "atom"),
        "github.repository == 'ROCm/ATOM'",
    ),
    SwitchOn(
        "atom-test.golden-output-on",
        STEPS + ({"name": "Compare output with golden outputs"},),
        "hashFiles(format('.github/workflows/golden_outputs/{0}_golden_output.txt', "
        "matrix.model_name)) != ''",
        drop_comments=("TODO: skip for all test", "# if: ${{ matrix.model_name"),
    ),
    # actionlint: the node20 runtime of the v4 actions is deprecated.
    SetEntry(
        "atom-test.checkout-v5",
        STEPS + ({"name": "Checkout ATOM repo"},),
        "uses",
        "actions/checkout@v5",
        replaces="actions/checkout@v4",
    ),
    SetEntry(
        "atom-test.upload-artifact-v6",
        STEPS + ({"name": "Upload output"},),
        "uses",
        "actions/upload-artifact@v6",
        replaces="actions/upload-artifact@v4",
    ),
]
