"""Overlay files of this series that upstream later wrote its own way."""

from pathlib import Path

from ruamel.yaml import YAML

OURS = Path(__file__).parents[2] / "overlay" / ".github" / "actionlint.yaml"


def runner_labels(text: str) -> set[str]:
    data = YAML(typ="safe").load(text) or {}
    return set((data.get("self-hosted-runner") or {}).get("labels") or ())


def names_our_runners(theirs: str) -> bool:
    """actionlint needs the self-hosted runners named; theirs names all of ours."""
    return runner_labels(OURS.read_text()) <= runner_labels(theirs)


COVERED = {
    ".github/actionlint.yaml": (
        names_our_runners,
        (
            "upstream acab7c8 (2026-06-18) added its own actionlint config, which "
            "names these self-hosted runners"
        ),
    ),
}
