"""pre-checks.yaml: a CPU `unit-tests` job (pytest -m "not gpu") that forks can run too.

Upstream later made its own `unit-tests` job and dropped `workflow_call`: each edit
says how it recognises that its effect is already there."""

from atom_ckfree.edits import (
    AddJob,
    MergeMapping,
    Unless,
    from_yaml,
    newer_action,
    snippet,
)


def has_job(name: str):
    return lambda doc: name in (doc.get("jobs") or {})


def not_reusable(doc) -> bool:
    """No `workflow_call` trigger: there are no inputs to add a switch to."""
    return "workflow_call" not in (doc.get("on") or {})


EDITS = [
    Unless(
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
        not_reusable,
    ),
    Unless(
        AddJob(
            "pre-checks.unit-tests-job",
            "unit-tests",
            snippet(__file__, "unit_tests_job.yaml"),
        ),
        has_job("unit-tests"),
    ),
    # actionlint: the node20 runtime of the v4 actions is deprecated, setup-python@v4's retired.
    newer_action(
        "pre-checks.black-checkout-v5",
        "black",
        "Checkout code",
        "actions/checkout@v4",
        "actions/checkout@v5",
    ),
    newer_action(
        "pre-checks.ruff-checkout-v5",
        "ruff",
        "Checkout code",
        "actions/checkout@v4",
        "actions/checkout@v5",
    ),
    newer_action(
        "pre-checks.ruff-setup-python-v6",
        "ruff",
        "Set up Python environment",
        "actions/setup-python@v4",
        "actions/setup-python@v6",
    ),
]
