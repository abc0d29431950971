"""atom-test.yaml: GPU jobs only in ROCm/ATOM (forks have no MI355 runners); golden
output comparison back on for every model that has a stored golden output.

Upstream renamed the accuracy job `atom` to `atom-test` (4fdb4f5), added a GPU job
`offline-smoke-test` (7672123), stopped running the simple inference whose output
the golden comparison reads (b674dc1) and moved to newer actions itself."""

from atom_ckfree.edits import (
    AddCondition,
    FirstOf,
    Obsolete,
    SwitchOn,
    newer_action,
)

ACCURACY_JOBS = ("atom-test", "atom")
UPSTREAM_ONLY = "github.repository == 'ROCm/ATOM'"


def in_accuracy_job(make):
    """One edit of the accuracy job, whichever name the job has here."""
    return FirstOf.each(ACCURACY_JOBS, make)


def lacks_job(name: str):
    return lambda doc: name not in (doc.get("jobs") or {})


def simple_inference_off(doc) -> bool:
    for job in ACCURACY_JOBS:
        for step in (doc.get("jobs") or {}).get(job, {}).get("steps", []):
            if step.get("name") == "Run ATOM simple inference":
                return step.get("if") is False
    return False


EDITS = [
    in_accuracy_job(
        lambda job: AddCondition(
            "atom-test.gpu-only-upstream", ("jobs", job), UPSTREAM_ONLY
        )
    ),
    Obsolete(
        AddCondition(
            "atom-test.smoke-test-upstream-only",
            ("jobs", "offline-smoke-test"),
            UPSTREAM_ONLY,
        ),
        lacks_job("offline-smoke-test"),
        "no such job here: upstream 7672123 (2026-08-01) added it",
    ),
    Obsolete(
        in_accuracy_job(
            lambda job: SwitchOn(
                "atom-test.golden-output-on",
                ("jobs", job, "steps", {"name": "Compare output with golden outputs"}),
                "hashFiles(format('.github/workflows/golden_outputs/{0}_golden_output.txt', "
                "matrix.model_name)) != ''",
                drop_comments=(
                    "TODO: skip for all test",
                    "# if: ${{ matrix.model_name",
                ),
            )
        ),
        simple_inference_off,
        "upstream b674dc1 (2026-03-11) skips the simple inference whose output the "
        "golden comparison reads (the accuracy test decides); 7672123 added an "
        "offline smoke test for that path",
    ),
    # actionlint: the node20 runtime of the v4 actions is deprecated.
    in_accuracy_job(
        lambda job: newer_action(
            "atom-test.checkout-v5",
            job,
            "Checkout ATOM repo",
            "actions/checkout@v4",
            "actions/checkout@v5",
        )
    ),
    in_accuracy_job(
        lambda job: newer_action(
            "atom-test.upload-artifact-v6",
            job,
            "Upload output",
            "actions/upload-artifact@v4",
            "actions/upload-artifact@v6",
        )
    ),
]
