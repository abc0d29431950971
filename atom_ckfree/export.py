"""The series as stacked upstream pull requests: one branch and one commit each.

Branch ``ck-free/NN-slug`` starts from the branch of the series' highest dependency
(or from the base) and adds whatever other dependencies that branch lacks, then the
series itself. Branches are built in a temporary git worktree, so the user's checkout
is never touched. Commits carry a fixed identity and the base commit's date, so the
same input gives the same commit: re-exporting an unchanged stack moves no branch,
and a changed series moves exactly its own branch and those stacked on it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import PIN, engine
from .errors import UserError
from .series import Series
from .workspace import AtomTree, git

BRANCH_PREFIX = "ck-free/"


def branch_name(series: Series) -> str:
    return f"{BRANCH_PREFIX}{series.name}"


@dataclass
class ExportedSeries:
    series: Series
    branch: str
    base_branch: str  # what the PR is opened against
    commit: str
    moved: bool  # False when the branch already pointed at this very commit
    extra: list[Series]  # dependencies replayed because the base branch lacks them
    body: Path
    patches: list[Path]


def closure(series: Series, by_number: dict[int, Series]) -> list[Series]:
    """The series and everything it needs, in order."""
    needed: set[int] = set()
    todo = [series.number]
    while todo:
        number = todo.pop()
        if number not in needed:
            needed.add(number)
            todo.extend(by_number[number].depends_on)
    return [by_number[n] for n in sorted(needed)]


# how the tests named in a series' [tests] are run: ATOM's GPU-free selection, as
# verify.failing_tests runs it, in the patched ATOM tree; atom-ckfree's in its checkout
ATOM_TESTS_COMMAND = 'python -m pytest -q -m "not gpu"'
CKFREE_TESTS_COMMAND = "python -m pytest -q"


def pr_body(
    series: Series,
    base_branch: str,
    extra: list[Series],
    files: list[str],
    all_series: list[Series],
) -> str:
    lines = [f"# {series.title}", "", series.description, ""]
    if series.depends_on:
        lines += ["## Depends on", ""]
        lines += [
            f"- `{BRANCH_PREFIX}{d:02d}-…` (series {d})" for d in series.depends_on
        ]
        lines.append("")
    if extra:
        lines.append(
            f"This branch stacks on `{base_branch}` and also carries "
            + ", ".join(f"`{branch_name(s)}`" for s in extra)
            + "; review those in their own PRs."
        )
        lines.append("")
    lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    lines += _tests_section(series, all_series)
    return "\n".join(lines).rstrip("\n") + "\n"


def _tests_section(series: Series, all_series: list[Series]) -> list[str]:
    lines = ["## Tests", ""]
    if series.atom_tests:
        adders = {path: s for s in all_series for path in s.overlay}
        later = []
        for test in series.atom_tests:
            if test in series.overlay:
                where = "new here"
            elif test in series.edit_modules:
                where = "changed here"
            elif test in adders:
                later.append(adders[test].number)
                where = f"new in `{BRANCH_PREFIX}{adders[test].number:02d}-…`"
            else:
                where = "ATOM's own"
            lines.append(f"- `{test}` ({where})")
        on = (
            f" with `{BRANCH_PREFIX}{max(later):02d}-…` checked out (it adds the new ones)"
            if later
            else ""
        )
        lines += [
            "",
            f"Run on a CPU, in ATOM{on}:",
            "",
            "```sh",
            f"{ATOM_TESTS_COMMAND} {' '.join(series.atom_tests)}",
            "```",
            "",
        ]
    if series.ckfree_tests:
        lines += [
            (
                "Tests in atom-ckfree, which keeps this change set as patch series "
                f"against ATOM `{PIN[:12]}`:"
            ),
            "",
        ]
        lines += [f"- `{test}`" for test in series.ckfree_tests]
        lines += [
            "",
            "Run in its checkout:",
            "",
            "```sh",
            f"{CKFREE_TESTS_COMMAND} {' '.join(series.ckfree_tests)}",
            "```",
            "",
        ]
    if not series.atom_tests and not series.ckfree_tests:
        lines.append("None listed.")
    return lines


def _resolve_placeholders(text: str, by_number: dict[int, Series]) -> str:
    for number, series in by_number.items():
        text = text.replace(
            f"`{BRANCH_PREFIX}{number:02d}-…`", f"`{branch_name(series)}`"
        )
    return text


def export(
    tree: AtomTree,
    selected: list[Series],
    all_series: list[Series],
    out: Path,
    base: str = "HEAD",
    pr_base: str = "main",
    author: tuple[str, str] = ("atom-ckfree", "atom-ckfree@users.noreply.github.com"),
    push: str | None = None,
    progress: engine.Step = lambda done, total, now: None,
) -> list[ExportedSeries]:
    by_number = {s.number: s for s in all_series}
    base_sha = git(
        tree.path, "rev-parse", "--verify", f"{base}^{{commit}}", check=False
    )
    if not base_sha:
        raise UserError(
            f"{base} is not a commit in {tree.path}",
            "give --base a commit, branch or tag",
        )
    if tree.changed_paths():
        raise UserError(
            f"{tree.path} has uncommitted changes",
            "export works from a clean work tree: commit or stash first",
        )
    chosen = {s.number for s in selected}
    for s in selected:
        missing = [d for d in s.depends_on if d not in chosen]
        if missing:
            raise UserError(
                f"series {s.number} stacks on series {missing}, which are not exported",
                "export the whole stack (--series all) or add them",
            )
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ckfree-export-"))
    work = scratch / "tree"
    git(tree.path, "worktree", "add", "-q", "--detach", str(work), base_sha)
    date = git(tree.path, "log", "-1", "--format=%cI", base_sha)
    identity = {
        "GIT_AUTHOR_NAME": author[0],
        "GIT_AUTHOR_EMAIL": author[1],
        "GIT_COMMITTER_NAME": author[0],
        "GIT_COMMITTER_EMAIL": author[1],
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_DATE": date,
    }
    exported: dict[int, ExportedSeries] = {}
    steps = len(selected) + bool(push)
    try:
        for index, series in enumerate(selected):
            progress(index, steps, branch_name(series))
            exported[series.number] = _build(
                AtomTree(work, identity),
                series,
                all_series,
                by_number,
                exported,
                base_sha,
                pr_base,
                out,
            )
    finally:
        git(tree.path, "worktree", "remove", "--force", str(work), check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    if push:
        progress(len(selected), steps, f"pushing to {push}")
        refs = [f"{e.branch}:refs/heads/{e.branch}" for e in exported.values()]
        try:
            git(tree.path, "push", "--force-with-lease", "-q", push, *refs)
        except subprocess.CalledProcessError as error:
            raise UserError(
                f"push to {push} failed: {error.stderr.strip()}",
                "check the remote and its branches",
            ) from error
    return list(exported.values())


def _build(
    work, series, all_series, by_number, exported, base_sha, pr_base, out
) -> ExportedSeries:
    parent = max(series.depends_on, default=None)
    start = exported[parent].commit if parent else base_sha
    base_branch = exported[parent].branch if parent else pr_base
    git(work.path, "checkout", "-q", "--detach", start)
    have = (
        {s.number for s in closure(by_number[parent], by_number)} if parent else set()
    )
    extra = [s for s in closure(series, by_number)[:-1] if s.number not in have]
    results = engine.apply(work, extra + [series], all_series, commit=True)
    bad = [r for r in results if r.outcome not in ("applied", "already applied")]
    if bad:
        raise UserError(
            f"series {bad[0].series.number} does not apply on {start[:12]} ({bad[0].outcome})",
            "run `apply-patches status` on that commit to see the conflict",
        )
    commit = work.head()
    branch = branch_name(series)
    old = git(
        work.path, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False
    )
    git(work.path, "branch", "-f", branch, commit)

    files = git(work.path, "diff", "--name-only", f"{commit}^", commit).splitlines()
    body = out / f"{series.name}.md"
    body.write_text(
        _resolve_placeholders(
            pr_body(series, base_branch, extra, files, all_series), by_number
        )
    )
    patch_dir = out / series.name
    shutil.rmtree(patch_dir, ignore_errors=True)
    patches = git(
        work.path, "format-patch", "-o", str(patch_dir), f"{commit}^..{commit}"
    ).splitlines()
    return ExportedSeries(
        series,
        branch,
        base_branch,
        commit,
        old != commit,
        extra,
        body,
        [Path(p) for p in patches],
    )
