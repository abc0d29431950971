"""Planning and applying series onto an ATOM tree.

A plan parses each target file once, runs the series' edits over it in order and
renders the result; nothing touches the disk until every file of the series is
planned without conflict, and a failed write or commit puts every file back.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .edits import FORMATS, Conflict
from .errors import UserError
from .series import Series
from .workspace import AtomTree

APPLIED, PENDING, CONFLICT = "applied", "pending", "conflict"


@dataclass
class Unit:
    """One edit or one overlay file, and where it stands in the tree."""

    file: str
    id: str
    state: str
    conflict: Conflict | None = None


@dataclass
class SeriesPlan:
    series: Series
    units: list[Unit] = field(default_factory=list)
    before: dict[str, str | None] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)

    @property
    def conflicts(self) -> list[Unit]:
        return [u for u in self.units if u.state == CONFLICT]

    @property
    def changes(self) -> dict[str, str]:
        return {p: t for p, t in self.after.items() if self.before.get(p) != t}

    @property
    def state(self) -> str:
        states = [u.state for u in self.units]
        if CONFLICT in states:
            return "conflicting"
        if all(s == APPLIED for s in states):
            return "applied"
        if all(s == PENDING for s in states):
            return "not applied"
        return "partly applied"

    def diff(self) -> str:
        out = []
        for path, text in self.changes.items():
            before = self.before.get(path)
            out.extend(
                difflib.unified_diff(
                    (before or "").splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    "/dev/null" if before is None else f"a/{path}",
                    f"b/{path}",
                )
            )
        return "".join(out)


Reader = Callable[[str], "str | None"]


def plan_series(series: Series, read: Reader) -> SeriesPlan:
    plan = SeriesPlan(series)
    for path, edits in series.edits.items():
        text = read(path)
        plan.before[path] = text
        if text is None:
            missing = Conflict(
                edits[0].id, f"the file {path}", "no such file in the tree"
            )
            plan.units += [Unit(path, e.id, CONFLICT, missing) for e in edits]
            continue
        fmt = FORMATS[edits[0].format]
        doc = fmt.parse(text)
        edited = (
            False  # once an edit changed the document, its lines are not the file's
        )
        for edit in edits:
            try:
                doc, changed = edit.apply(doc)
            except Conflict as conflict:
                if edited:
                    conflict = _on_original(edit, fmt, text, conflict)
                plan.units.append(Unit(path, edit.id, CONFLICT, conflict))
                continue
            edited = edited or changed
            plan.units.append(Unit(path, edit.id, PENDING if changed else APPLIED))
        if edited:
            plan.after[path] = fmt.finish(text, fmt.render(doc))
        else:
            plan.after[path] = text
    for path in series.overlay:
        wanted = series.overlay_source(path).read_text()
        have = read(path)
        plan.before[path] = have
        if have is None:
            plan.units.append(Unit(path, f"overlay:{path}", PENDING))
            plan.after[path] = wanted
        elif have == wanted:
            plan.units.append(Unit(path, f"overlay:{path}", APPLIED))
        else:
            found = f"{path} exists with other content ({len(have.splitlines())} lines)"
            plan.units.append(
                Unit(
                    path,
                    f"overlay:{path}",
                    CONFLICT,
                    Conflict(f"overlay:{path}", "no file, or ours", found, 1),
                )
            )
    return plan


def _on_original(edit, fmt, text: str, conflict: Conflict) -> Conflict:
    """Report the line as it is in the file on disk, not in the half-edited document."""
    try:
        edit.apply(fmt.parse(text))
    except Conflict as original:
        return original
    return conflict


@dataclass
class SeriesResult:
    series: Series
    outcome: str  # applied | already applied | would apply | conflict | skipped
    plan: SeriesPlan | None = None
    commit: str | None = None
    reason: str = ""


# progress(done, total, now): done of total steps finished, now is what runs next
Step = Callable[[int, int, str], None]


def status(
    tree: AtomTree,
    all_series: list[Series],
    progress: Step = lambda done, total, now: None,
) -> list[SeriesPlan]:
    plans = []
    for index, series in enumerate(all_series):
        progress(index, len(all_series), f"planning {series.name}")
        plans.append(plan_series(series, tree.read))
    return plans


def apply(
    tree: AtomTree,
    selected: list[Series],
    all_series: list[Series],
    *,
    dry_run: bool = False,
    commit: bool = False,
    allow_dirty: bool = False,
    progress: Step = lambda done, total, now: None,
) -> list[SeriesResult]:
    steps = len(all_series) + len(selected)  # plan every series, then apply each
    current = {
        p.series.number: p
        for p in status(tree, all_series, lambda i, _, now: progress(i, steps, now))
    }
    _check_dependencies(selected, current)
    if not allow_dirty:
        _check_clean(tree, current)

    staged: dict[str, str] = {}  # what earlier series of a dry run would have written
    written: set[str] = set()  # paths this run changed, staged or on disk

    def read(path: str) -> str | None:
        return staged[path] if path in staged else tree.read(path)

    results: list[SeriesResult] = []
    for index, series in enumerate(selected):
        progress(len(all_series) + index, steps, f"applying {series.name}")
        # the status plan still holds unless an earlier series of this run changed a file
        if written.isdisjoint(series.files):
            plan = current[series.number]
        else:
            plan = plan_series(series, read)
        if plan.conflicts:
            results.append(SeriesResult(series, "conflict", plan))
            results += [
                SeriesResult(s, "skipped", reason=f"series {series.number} conflicts")
                for s in selected[index + 1 :]
            ]
            break
        changes = plan.changes
        written.update(changes)
        if not changes:
            results.append(SeriesResult(series, "already applied", plan))
            continue
        if dry_run:
            staged.update(changes)
            results.append(SeriesResult(series, "would apply", plan))
            continue
        sha = write(tree, plan, commit, len(all_series))
        results.append(SeriesResult(series, "applied", plan, commit=sha))
    return results


def _check_dependencies(selected: list[Series], current: dict[int, SeriesPlan]) -> None:
    chosen = {s.number for s in selected}
    for series in selected:
        for dep in series.depends_on:
            if dep not in chosen and current[dep].state != "applied":
                raise UserError(
                    f"series {series.number} ({series.slug}) needs series {dep}, "
                    f"which is {current[dep].state} in this tree",
                    f"add what it needs: --series {','.join(map(str, _needed(chosen, current)))}",
                )


def _needed(chosen: set[int], current: dict[int, SeriesPlan]) -> list[int]:
    """``chosen`` and every dependency, direct or not, that the tree does not have."""
    needed, todo = set(), list(chosen)
    while todo:
        number = todo.pop()
        if number not in needed:
            needed.add(number)
            todo += [
                d
                for d in current[number].series.depends_on
                if current[d].state != "applied"
            ]
    return sorted(needed)


def _check_clean(tree: AtomTree, current: dict[int, SeriesPlan]) -> None:
    ours = {f for p in current.values() if p.state == "applied" for f in p.series.files}
    foreign = [p for p in tree.changed_paths() if p not in ours]
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise UserError(
            f"{tree.path} has uncommitted changes: {shown}",
            "commit or stash them first, or pass --allow-dirty",
        )


def write(tree: AtomTree, plan: SeriesPlan, commit: bool, total: int) -> str | None:
    written: list[str] = []
    made: list[Path] = []
    try:
        for path, text in plan.changes.items():
            target = tree.path / path
            for parent in reversed(target.relative_to(tree.path).parents[:-1]):
                if not (tree.path / parent).exists():
                    (tree.path / parent).mkdir()
                    made.append(tree.path / parent)
            temp = target.with_name(f".{target.name}.ckfree-tmp")
            temp.write_text(text)
            if path in plan.series.overlay:  # scripts stay executable
                shutil.copymode(plan.series.overlay_source(path), temp)
            written.append(path)
            os.replace(temp, target)
        if commit:
            series = plan.series
            message = f"[CK-free {series.number}/{total}] {series.title}\n\n{series.description}\n"
            return tree.commit(sorted(plan.changes), message)
    except BaseException as error:
        for path in written:
            before = plan.before[path]
            target = tree.path / path
            target.with_name(f".{target.name}.ckfree-tmp").unlink(missing_ok=True)
            if before is None:
                target.unlink(missing_ok=True)
            else:
                target.write_text(before)
        for folder in reversed(made):
            folder.rmdir()
        if isinstance(error, (OSError, subprocess.CalledProcessError)):
            detail = getattr(error, "stderr", "") or str(error)
            raise UserError(
                f"writing series {plan.series.number} failed and was undone: {detail.strip()}",
                "fix the cause (permissions, git identity for --commit) and run again",
            ) from error
        raise
    return None
