"""The series as stacked upstream pull requests: one branch and one commit each.

Branch ``PREFIX/NN-slug`` (the manifest's export prefix) starts from the branch of the series' highest dependency
(or from the base) and adds whatever other dependencies that branch lacks, then the
series itself. Branches are built in a temporary git worktree, so the user's checkout
is never touched. Commits carry a fixed identity and the base commit's date, so the
same input gives the same commit: re-exporting an unchanged stack moves no branch,
and a changed series moves exactly its own branch and those stacked on it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import engine, project
from .errors import FaultError, UserError
from .series import Series
from .states import DONE, Outcome
from .workspace import WorkTree, git, identity


def branch_name(series: Series) -> str:
    return f"{project.current().export_prefix}{series.name}"


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


# how atom-ckfree's own tests named in a series' [tests] run, in its checkout
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
        lines += [f"- `{_placeholder(d)}` (series {d})" for d in series.depends_on]
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


def _placeholder(number: int) -> str:
    """A series' branch in a PR body before the stack's names are known."""
    return f"{project.current().export_prefix}{number:02d}-…"


def _tests_section(series: Series, all_series: list[Series]) -> list[str]:
    upstream = project.current()
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
                where = f"new in `{_placeholder(adders[test].number)}`"
            else:
                where = f"{upstream.name}'s own"
            lines.append(f"- `{test}` ({where})")
        on = (
            f" with `{_placeholder(max(later))}` checked out (it adds the new ones)"
            if later
            else ""
        )
        lines += [
            "",
            f"Run on a CPU, in {upstream.name}{on}:",
            "",
            "```sh",
            shlex.join(["python", "-m", *upstream.test_command, *series.atom_tests]),
            "```",
            "",
        ]
    if series.ckfree_tests:
        lines += [
            (
                "Tests in atom-ckfree, which keeps this change set as patch series "
                f"against {upstream.name} `{upstream.pin[:12]}`:"
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
        text = text.replace(f"`{_placeholder(number)}`", f"`{branch_name(series)}`")
    return text


# the subject ``apply --commit`` gives each series commit: ``[CK-free N/TOTAL] title``
SERIES_SUBJECT = re.compile(r"\[CK-free \d+/\d+\] ")


def below_series_commits(path: Path, rev: str) -> tuple[str, int]:
    """The first commit at or below ``rev`` (first-parent) that is not a series commit
    made by ``apply --commit``, and how many series commits lie above it."""
    log = git(path, "log", "--first-parent", "-n", "100", "--format=%H %s", rev)
    for skipped, line in enumerate(log.splitlines()):
        sha, _, subject = line.partition(" ")
        if not SERIES_SUBJECT.match(subject):
            return sha, skipped
    raise UserError(
        f"{rev} in {path} is only series commits, no upstream commit below them",
        "give --base the upstream commit the stack should start from",
    )


def export(
    tree: WorkTree,
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
    out = Path(out).expanduser().resolve()  # against the caller's cwd, not the worktree
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out} is a file, not a directory",
            "give --out a new or existing folder",
        )
    base_sha = git(
        tree.path, "rev-parse", "--verify", "-q", f"{base}^{{commit}}", check=False
    )
    if not base_sha:
        raise UserError(
            f"{base} is not a commit in {tree.path}",
            "give --base a commit, branch or tag",
        )
    if push:  # before the long build, not after it
        _check_remote(tree, push)
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
    # a tree patched with `apply --commit` carries the series: stack from below them
    base_sha, skipped = below_series_commits(tree.path, base_sha)
    if skipped:
        print(
            f"note: {base} carries {skipped} series commits (apply --commit); the stack "
            f"starts below them at {base_sha[:12]} (--base picks another)",
            file=sys.stderr,
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"--out {out}: cannot create it ({error.strerror})",
            "give --out a folder that can be made",
        ) from error
    branches = [f"refs/heads/{branch_name(s)}" for s in selected]
    before = {
        ref: git(tree.path, "rev-parse", "--verify", "-q", ref, check=False) or None
        for ref in branches
    }
    try:
        exported = _build_stack(
            tree,
            selected,
            all_series,
            by_number,
            base_sha,
            pr_base,
            out,
            author,
            progress,
            steps=len(selected) + bool(push),
        )
        if push:
            progress(len(selected), len(selected) + 1, f"pushing to {push}")
            _push(tree, push, list(exported.values()))
    except BaseException as error:
        _restore_branches(tree, before, error)
        raise
    return list(exported.values())


def _build_stack(
    tree,
    selected,
    all_series,
    by_number,
    base_sha,
    pr_base,
    out,
    author,
    progress,
    steps,
) -> dict[int, ExportedSeries]:
    """Every selected series' branch, built in a temporary worktree that is always
    removed again."""
    scratch = Path(tempfile.mkdtemp(prefix="ckfree-export-"))
    work = scratch / "tree"
    exported: dict[int, ExportedSeries] = {}
    try:
        git(tree.path, "worktree", "add", "-q", "--detach", str(work), base_sha)
        date = git(tree.path, "log", "-1", "--format=%cI", base_sha)
        commit_env = identity(*author, date)
        for index, series in enumerate(selected):
            progress(index, steps, branch_name(series))
            exported[series.number] = _build(
                WorkTree(work, commit_env),
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
        git(tree.path, "worktree", "prune", check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    return exported


def _check_remote(tree: WorkTree, remote: str) -> None:
    try:
        git(tree.path, "ls-remote", "-q", "--heads", remote)
    except subprocess.CalledProcessError as error:
        raise UserError(
            f"--push {remote}: cannot reach that remote from {tree.path}",
            "name a remote of the repository (git remote -v) or a URL",
            error.stderr,
        ) from error


def _push(tree: WorkTree, remote: str, stack: list[ExportedSeries]) -> None:
    # --atomic: the remote takes every branch or none, so a failure leaves it as it was
    refs = [f"{e.branch}:refs/heads/{e.branch}" for e in stack]
    try:
        git(tree.path, "push", "--atomic", "--force-with-lease", "-q", remote, *refs)
    except subprocess.CalledProcessError as error:
        raise UserError(
            f"push to {remote} failed; nothing was pushed and the local branches "
            "were put back",
            "check the remote (git remote -v) and its branches, then export again",
            error.stderr,
        ) from error


def _restore_branches(
    tree: WorkTree, before: dict[str, str | None], cause: BaseException
) -> None:
    """Put every export branch back where it was before this run (deleting the new);
    what cannot be put back is named with the command that does it."""
    left = []
    for ref, old in before.items():
        now = git(tree.path, "rev-parse", "--verify", "-q", ref, check=False) or None
        if now == old:
            continue
        try:
            git(tree.path, "update-ref", *((ref, old) if old else ("-d", ref)))
        except subprocess.CalledProcessError:
            name = ref.removeprefix("refs/heads/")
            left.append(
                f"git branch -f {name} {old}" if old else f"git branch -D {name}"
            )
    if left:
        raise FaultError(
            f"export failed and could not put back {len(left)} branches in {tree.path}",
            f"run there: {' && '.join(left)}",
            str(cause),
        ) from cause


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
    bad = [r for r in results if r.outcome not in DONE]
    if bad:
        raise UserError(
            f"series {bad[0].series.number} does not apply on {start[:12]} ({bad[0].outcome})",
            "run `apply-patches status` on that commit to see the conflict",
        )
    if results[-1].outcome == Outcome.ALREADY_APPLIED:
        raise UserError(
            f"series {series.number} is already in {start[:12]}, so its branch would "
            "carry nothing",
            "export from a commit without the series: --base COMMIT",
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
