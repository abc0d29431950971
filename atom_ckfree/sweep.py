"""The nightly rebase job: every series onto an upstream commit, verified.

Per series the verdict is ``applied+verified``, ``already upstream`` (each edit finds
its effect already there), ``obsolete`` (nothing left to do, some of it because
upstream removed or replaced what an edit changes: each names the commit), ``drifted`` (an anchor moved or vanished: the conflicts
say where), ``verify-failed`` (it applies, and a check then finds something new) or
``unverifiable`` (it applies, but the unpatched tree's suite ran no test, or did not
finish, so there is nothing to compare the patched tree's with).
A range sweep samples upstream history in one reused scratch tree, and for a series
that drifts between two samples finds the upstream commit that did it by bisecting
the commits that touched its files (planning reads files straight from git there,
so bisecting costs no checkout).
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import engine, verify
from .errors import UserError
from .report import conflict_text
from .series import Series
from .states import UnitState, Verdict
from .workspace import WorkTree, git, identity

_WORDS = {v.value for v in Verdict}

_SWEEP_IDENTITY = identity("atom-ckfree sweep", "sweep@atom-ckfree.invalid")


@dataclass
class SeriesVerdict:
    series: int
    name: str
    verdict: Verdict
    details: list[str] = field(default_factory=list)
    upstream_edits: list[str] = field(default_factory=list)  # edits already upstream
    obsolete_edits: list[str] = field(default_factory=list)  # "id: upstream evidence"
    three_way: bool | None = None  # did the pin-made patch apply with git apply --3way
    culprit: str | None = None  # the upstream commit that broke it (range sweeps)
    tests: dict | None = None  # the tests check: runner, tests_before, tests_after

    def data(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


@dataclass
class CommitReport:
    commit: str
    date: str
    subject: str
    verdicts: list[SeriesVerdict]

    def data(self) -> dict:
        return {
            "commit": self.commit,
            "date": self.date,
            "subject": self.subject,
            "series": [v.data() for v in self.verdicts],
        }


def git_reader(repo: Path, commit: str) -> engine.Reader:
    def read(path: str) -> str | None:
        try:
            return git(repo, "show", f"{commit}:{path}", strip=False)
        except subprocess.CalledProcessError:
            return None

    return read


class Scratch:
    """One detached worktree of the cache repository, moved from commit to commit."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.folder = Path(tempfile.mkdtemp(prefix="ckfree-sweep-"))
        self.path = self.folder / "atom"
        self._added = False

    def at(self, commit: str) -> WorkTree:
        if not self._added:
            git(self.repo, "worktree", "add", "-q", "--detach", str(self.path), commit)
            self._added = True
        else:
            git(self.path, "checkout", "-q", "-f", "--detach", commit)
            git(self.path, "clean", "-q", "-fdx")
        return WorkTree(self.path)

    def close(self) -> None:
        if self._added:
            git(self.repo, "worktree", "remove", "--force", str(self.path), check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def pin_patches(
    scratch: Scratch,
    pin: str,
    all_series: list[Series],
    progress: engine.Step = lambda done, total, now: None,
) -> dict[int, str]:
    """Each series as a plain patch made at the pin, for the ``git apply --3way``
    comparison (series applied cumulatively, like the PR stack)."""
    tree = scratch.at(pin)
    patches = {}
    for index, series in enumerate(all_series):
        progress(index, len(all_series), series.name)
        plan = engine.plan_series(series, tree.read)
        if plan.conflicts:
            continue
        engine.write(tree, plan, commit=False, total=len(all_series))
        git(tree.path, "add", "-A")
        patches[series.number] = git(
            tree.path, "diff", "--cached", "--binary", strip=False
        )
        git(
            tree.path,
            "commit",
            "-q",
            "--no-verify",
            "-m",
            series.name,
            env=_SWEEP_IDENTITY,
        )
    return patches


def _three_way(tree: WorkTree, patch: str) -> bool:
    try:
        git(tree.path, "apply", "--3way", "--whitespace=nowarn", "-", input=patch)
    except subprocess.CalledProcessError:
        return False
    return True


def sweep_commit(
    scratch: Scratch,
    commit: str,
    all_series: list[Series],
    checks: tuple[str, ...],
    patches: dict[int, str] | None = None,
    previous: CommitReport | None = None,
    progress: engine.Step = lambda done, total, now: None,
) -> CommitReport:
    """Verdicts at ``commit``. A series whose files are the same as at ``previous``
    keeps its verdict there, unless the tests run (they see the whole tree)."""
    tree = scratch.at(commit)
    date, subject = git(tree.path, "log", "-1", "--format=%cs%x00%s", commit).split(
        "\0"
    )
    kept = {}
    if previous is not None and "tests" not in checks:
        kept = {
            v.series: v
            for series, v in zip(all_series, previous.verdicts)
            if not git(
                tree.path,
                "diff",
                "--name-only",
                previous.commit,
                commit,
                "--",
                *series.files,
            )
        }
    fresh = [s for s in all_series if s.number not in kept]
    progress(0, len(all_series), "checking the unpatched tree")
    before = verify.baseline(
        tree.path, sorted({f for s in fresh for f in s.files}), checks
    )
    verdicts = []
    for index, series in enumerate(all_series):
        progress(index, len(all_series), series.name)
        if series.number in kept:
            verdicts.append(dataclasses.replace(kept[series.number], culprit=None))
            continue
        plan = engine.plan_series(series, tree.read)
        verdict = SeriesVerdict(series.number, series.name, Verdict.DRIFTED)
        verdict.upstream_edits = [
            u.id
            for u in plan.units
            if u.state == UnitState.APPLIED and not u.id.startswith("overlay:")
        ]
        verdict.obsolete_edits = [
            f"{u.id}: {u.evidence}" for u in plan.units if u.state == UnitState.OBSOLETE
        ]
        if plan.conflicts:
            verdict.verdict = Verdict.DRIFTED
            verdict.details = [conflict_text(series.number, u) for u in plan.conflicts]
        elif not plan.changes:
            verdict.verdict = (
                Verdict.OBSOLETE if verdict.obsolete_edits else Verdict.ALREADY_UPSTREAM
            )
        else:
            engine.write(tree, plan, commit=False, total=len(all_series))
            found = verify.problems(tree.path, list(plan.changes), checks, before)
            verdict.tests = found.tests
            verdict.details = found.problems
            if found.problems:
                verdict.verdict = Verdict.VERIFY_FAILED
            elif found.unverifiable:
                verdict.verdict = Verdict.UNVERIFIABLE
                verdict.details = [found.unverifiable]
            else:
                verdict.verdict = Verdict.VERIFIED
        verdicts.append(verdict)
    if patches:
        _stack_three_way(scratch.at(commit), verdicts, patches)
    return CommitReport(commit, date, subject, verdicts)


def _stack_three_way(
    tree: WorkTree, verdicts: list[SeriesVerdict], patches: dict[int, str]
) -> None:
    """Re-apply the pin-made patches in order, as a rebase of the stack would: each
    one that applies is committed for the next; one that fails is rolled back."""
    for verdict in verdicts:
        patch = patches.get(verdict.series)
        verdict.three_way = bool(patch) and _three_way(tree, patch)
        if verdict.three_way:
            git(
                tree.path,
                "commit",
                "-q",
                "--allow-empty",
                "--no-verify",
                "-m",
                verdict.name,
                env=_SWEEP_IDENTITY,
            )
        else:
            git(tree.path, "reset", "-q", "--hard")


def first_drift(repo: Path, series: Series, good: str, bad: str) -> str | None:
    """The first commit in good..bad after which ``series`` no longer plans cleanly."""
    candidates = git(
        repo,
        "rev-list",
        "--reverse",
        "--first-parent",
        f"{good}..{bad}",
        "--",
        *series.files,
    ).split()
    low, high = 0, len(candidates) - 1
    if not candidates:
        return None
    while low < high:
        middle = (low + high) // 2
        if engine.plan_series(series, git_reader(repo, candidates[middle])).conflicts:
            high = middle
        else:
            low = middle + 1
    return candidates[low]


def sample(repo: Path, start: str, end: str, every: int) -> list[str]:
    commits = git(
        repo, "rev-list", "--reverse", "--first-parent", f"{start}..{end}"
    ).split()
    picked = [git(repo, "rev-parse", f"{start}^{{commit}}")] + commits[
        every - 1 :: every
    ]
    if commits and picked[-1] != commits[-1]:
        picked.append(commits[-1])
    return picked


def sweep(
    repo: Path,
    commits: list[str],
    all_series: list[Series],
    checks: tuple[str, ...],
    pin: str | None = None,
    progress: engine.Step = lambda done, total, now: None,
) -> list[CommitReport]:
    # steps: each series at the pin (for --3way), then each series at each commit
    per_commit = len(all_series)
    steps = per_commit * (len(commits) + bool(pin))

    def stage(offset: int, what: str) -> engine.Step:
        return lambda done, _, now: progress(offset + done, steps, f"{what}: {now}")

    scratch = Scratch(repo)
    try:
        patches = (
            pin_patches(scratch, pin, all_series, stage(0, f"pin {pin[:12]}"))
            if pin
            else None
        )
        reports: list[CommitReport] = []
        for index, commit in enumerate(commits):
            previous = reports[-1] if reports else None
            reports.append(
                sweep_commit(
                    scratch,
                    commit,
                    all_series,
                    checks,
                    patches,
                    previous,
                    stage(
                        per_commit * (index + bool(pin)),
                        f"commit {index + 1}/{len(commits)} {commit[:12]}",
                    ),
                )
            )
    finally:
        scratch.close()
    by_number = {s.number: s for s in all_series}
    drifts = [
        (earlier, later, now)
        for earlier, later in itertools.pairwise(reports)
        for was, now in zip(earlier.verdicts, later.verdicts)
        if now.verdict == Verdict.DRIFTED and was.verdict != Verdict.DRIFTED
    ]
    for index, (earlier, later, now) in enumerate(drifts):
        progress(steps + index, steps + len(drifts), f"bisecting {now.name}")
        now.culprit = first_drift(
            repo, by_number[now.series], earlier.commit, later.commit
        )
    return reports


def survival(reports: list[CommitReport]) -> list[dict]:
    """Per series over a range: how many samples were good, and where it first broke,
    semantically and as a plain ``git apply --3way`` patch."""
    rows = []
    for i, first in enumerate(reports[0].verdicts):
        column = [r.verdicts[i] for r in reports]
        broke = next((k for k, v in enumerate(column) if not v.verdict.good), None)
        broke_3way = next(
            (k for k, v in enumerate(column) if v.three_way is False), None
        )
        rows.append(
            {
                "series": first.series,
                "name": first.name,
                "good_samples": sum(v.verdict.good for v in column),
                "samples": len(column),
                "survives_until": (
                    reports[(broke or len(reports)) - 1].commit if broke != 0 else None
                ),
                "first_break": reports[broke].commit if broke is not None else None,
                "first_break_verdict": (
                    column[broke].verdict if broke is not None else None
                ),
                "culprit": column[broke].culprit if broke is not None else None,
                "three_way_good_samples": sum(v.three_way is True for v in column),
                "three_way_first_break": (
                    reports[broke_3way].commit if broke_3way is not None else None
                ),
                "final": column[-1].verdict,
            }
        )
    return rows


def check_baseline(data, source: str) -> None:
    """Refuse, before any sweep runs, a baseline that ``worse_than`` cannot read."""
    try:
        rows = data["commits"][-1]["series"]
        readable = bool(rows) and all(
            isinstance(row["series"], int) and row["verdict"] in _WORDS for row in rows
        )
    except (KeyError, IndexError, TypeError):
        readable = False
    if not readable:
        raise UserError(
            f"{source} is not a sweep report: no commits[-1].series with a series "
            "number and a verdict each",
            "give --baseline a file written by `apply-patches sweep --json`",
        )


def worse_than(reports: list[CommitReport], baseline: dict) -> list[str]:
    """Series whose verdict at the newest commit ranks worse than in ``baseline``."""
    previous = {s["series"]: s["verdict"] for s in baseline["commits"][-1]["series"]}
    return [
        f"series {v.series} ({v.name}): {previous[v.series]} → {v.verdict}"
        for v in reports[-1].verdicts
        if v.series in previous and v.verdict.rank > Verdict(previous[v.series]).rank
    ]
