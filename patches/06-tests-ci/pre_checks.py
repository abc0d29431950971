"""pre-checks.yaml: a CPU `unit-tests` job (pytest -m "not gpu") that forks can run too."""

from atom_ckfree.edits import AddJob, MergeMapping, SetEntry, from_yaml

EDITS = [
    MergeMapping(
        "pre-checks.unit-tests-input",
        path=("on", "workflow_call", "inputs"),
        data=from_yaml("""
            unit-tests:
              description: "Enable the CPU unit tests (pytest -m 'not gpu')"
              required: false
              type: boolean
              default: true
            """),
    ),
    AddJob(
        "pre-checks.unit-tests-job",
        "unit-tests",
        """
        name: CPU unit tests
        if: inputs.unit-tests
        # GitHub-hosted and CPU-only, so that forks without GPU runners run it too;
        # tests that need a GPU carry the `gpu` marker and are deselected.
        runs-on: ubuntu-latest
        timeout-minutes: 30
        steps:
          - name: Checkout code
            uses: actions/checkout@v5
          - name: Set up Python environment
            uses: actions/setup-python@v6
            with:
              python-version: "3.12"
          - name: Install CPU dependencies
            run: |
              python -m pip install --upgrade pip
              python -m pip install torch --index-url https://download.pytorch.org/whl/cpu
              python -m pip install triton numpy transformers psutil pyzmq xxhash pytest
          - name: Run the unit tests
            run: python -m pytest -m "not gpu" tests
        """,
    ),
    # actionlint: the node20 runtime of the v4 actions is deprecated, setup-python@v4's retired.
    SetEntry(
        "pre-checks.black-checkout-v5",
        ("jobs", "black", "steps", {"name": "Checkout code"}),
        "uses",
        "actions/checkout@v5",
        replaces="actions/checkout@v4",
    ),
    SetEntry(
        "pre-checks.ruff-checkout-v5",
        ("jobs", "ruff", "steps", {"name": "Checkout code"}),
        "uses",
        "actions/checkout@v5",
        replaces="actions/checkout@v4",
    ),
    SetEntry(
        "pre-checks.ruff-setup-python-v6",
        ("jobs", "ruff", "steps", {"name": "Set up Python environment"}),
        "uses",
        "actions/setup-python@v6",
        replaces="actions/setup-python@v4",
    ),
]
