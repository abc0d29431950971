"""The expected result of every series: its effect on each base, committed as a diff.

``patches/NN-slug/expected/<base>.diff`` (``pin.diff``, ``main.diff``: one for
each ``[[bases]]`` of the manifest) is the unified diff that series NN makes on
top of the series before it (the stacked result), against that base as the tool's
upstream cache holds it. ``regen`` writes these files; ``regen --check`` says which
no longer match what the series produce, so that a change to an edit, a primitive
or a formatter that silently changes ATOM output shows up in review and in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import project, upstream
from .engine import plan_series
from .errors import DriftError, UserError
from .report import conflict_text
from .series import Series
from .workspace import git


def expected_path(series: Series, base: str) -> Path:
    return series.folder / "expected" / f"{base}.diff"


@dataclass
class Expected:
    series: Series
    base: str  # the manifest's name of the base: pin, main
    diff: str  # what the series produce now
    committed: str | None  # what expected/<base>.diff holds, None without one

    @property
    def path(self) -> Path:
        return expected_path(self.series, self.base)

    @property
    def current(self) -> bool:
        return self.diff == self.committed


def base_reader(base: project.Base | None = None, repo: Path | None = None):
    """``read(path)`` → the file's text at the base (default: the pin) in the
    upstream cache, or None."""
    repo = repo or upstream.cache_repo()
    base = base or project.current().bases[0]
    commit = base.commit
    if upstream.resolve(commit, repo) is None:
        raise UserError(
            f"the {base.name} {commit[:12]} is not in the upstream cache {repo}",
            "seed it: apply-patches checkout --upstream <URL or git dir> DEST",
        )
    paths = set(git(repo, "ls-tree", "-r", "--name-only", commit).splitlines())

    def read(path: str) -> str | None:
        if path not in paths:
            return None
        return git(repo, "show", f"{commit}:{path}", strip=False)

    return read


def stacked_diffs(all_series: list[Series], read, base: str = "pin") -> list[Expected]:
    """Each series planned on a base with every earlier series applied."""
    staged: dict[str, str] = {}
    found = []
    for series in all_series:
        plan = plan_series(
            series, lambda path: staged[path] if path in staged else read(path)
        )
        if plan.conflicts:
            raise DriftError(
                f"series {series.name} does not apply on the {base}: "
                + conflict_text(series.number, plan.conflicts[0]),
                "fix the series before regenerating its expected diff",
            )
        staged.update(plan.changes)
        path = expected_path(series, base)
        committed = path.read_text() if path.is_file() else None
        found.append(Expected(series, base, plan.diff(), committed))
    return found


def every_base(all_series: list[Series]) -> list[Expected]:
    """The stacked diffs on each base the manifest lists."""
    return [
        e
        for base in project.current().bases
        for e in stacked_diffs(all_series, base_reader(base), base.name)
    ]


def write(expected: list[Expected]) -> None:
    """Write the expected diffs that are stale; leave the others untouched."""
    for e in expected:
        if not e.current:
            e.path.parent.mkdir(exist_ok=True)
            e.path.write_text(e.diff)
