"""Planning and applying series onto an ATOM tree.

A plan parses each target file once, runs the series' edits over it in order and
renders the result; nothing touches the disk until every file of the series is
planned without conflict, and a failed write or commit puts every file back.
"""

from __future__ import annotations

import difflib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import journal, project, treelock
from .edits import FORMATS, Conflict, Moot, Obsolete
from .errors import FaultError, UserError
from .series import Series
from .states import Outcome, SeriesState, UnitState
from .workspace import WorkTree


@dataclass
class Unit:
    """One edit or one overlay file, and where it stands in the tree."""

    file: str
    id: str
    state: UnitState
    conflict: Conflict | None = None
    evidence: str | None = None  # why it is obsolete: the upstream commit


@dataclass
class SeriesPlan:
    series: Series
    units: list[Unit] = field(default_factory=list)
    before: dict[str, str | None] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)

    @property
    def conflicts(self) -> list[Unit]:
        return [u for u in self.units if u.state == UnitState.CONFLICT]

    @property
    def changes(self) -> dict[str, str]:
        return {p: t for p, t in self.after.items() if self.before.get(p) != t}

    @property
    def state(self) -> SeriesState:
        states = [u.state for u in self.units]
        if UnitState.CONFLICT in states:
            return SeriesState.CONFLICTING
        if all(s in (UnitState.APPLIED, UnitState.OBSOLETE) for s in states):
            return SeriesState.APPLIED
        if all(s == UnitState.PENDING for s in states):
            return SeriesState.NOT_APPLIED
        return SeriesState.PARTLY_APPLIED

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
            plan.units += [_on_missing_file(path, e, missing) for e in edits]
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
                plan.units.append(Unit(path, edit.id, UnitState.CONFLICT, conflict))
                continue
            except Moot as moot:
                plan.units.append(
                    Unit(path, edit.id, UnitState.OBSOLETE, evidence=moot.evidence)
                )
                continue
            edited = edited or changed
            plan.units.append(
                Unit(path, edit.id, UnitState.PENDING if changed else UnitState.APPLIED)
            )
        if edited:
            plan.after[path] = fmt.finish(text, fmt.render(doc))
        else:
            plan.after[path] = text
    for path in series.overlay:
        wanted = series.overlay_source(path).read_text()
        have = read(path)
        plan.before[path] = have
        if have is None:
            plan.units.append(Unit(path, f"overlay:{path}", UnitState.PENDING))
            plan.after[path] = wanted
        elif have == wanted:
            plan.units.append(Unit(path, f"overlay:{path}", UnitState.APPLIED))
        elif path in series.covered and series.covered[path][0](have):
            evidence = series.covered[path][1]
            plan.units.append(
                Unit(path, f"overlay:{path}", UnitState.OBSOLETE, evidence=evidence)
            )
        else:
            found = f"{path} exists with other content ({len(have.splitlines())} lines)"
            plan.units.append(
                Unit(
                    path,
                    f"overlay:{path}",
                    UnitState.CONFLICT,
                    Conflict(f"overlay:{path}", "no file, or ours", found, 1),
                )
            )
    return plan


def _on_missing_file(path: str, edit, missing: Conflict) -> Unit:
    """An edit of a file upstream deleted is obsolete where it says so (an
    :class:`Obsolete` whose ``gone`` answers yes for no document), else a conflict."""
    if isinstance(edit, Obsolete) and edit.gone(None):
        return Unit(path, edit.id, UnitState.OBSOLETE, evidence=edit.evidence)
    return Unit(path, edit.id, UnitState.CONFLICT, missing)


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
    outcome: Outcome
    plan: SeriesPlan | None = None
    commit: str | None = None
    reason: str = ""


# progress(done, total, now): done of total steps finished, now is what runs next
Step = Callable[[int, int, str], None]


def status(
    tree: WorkTree,
    all_series: list[Series],
    progress: Step = lambda done, total, now: None,
) -> list[SeriesPlan]:
    plans = []
    for index, series in enumerate(all_series):
        progress(index, len(all_series), f"planning {series.name}")
        plans.append(plan_series(series, tree.read))
    return plans


class _Plans(dict):
    """Series number → its plan on the tree as it is, made on first use (planning a
    series parses its files: only the series a run needs are planned)."""

    def __init__(self, tree: WorkTree, all_series: list[Series]):
        super().__init__()
        self.tree = tree
        self.by_number = {s.number: s for s in all_series}

    def __missing__(self, number: int) -> SeriesPlan:
        plan = self[number] = plan_series(self.by_number[number], self.tree.read)
        return plan


def recover(
    tree: WorkTree, notice: Callable[[str], None], *, busy_ok: bool = False
) -> None:
    """Undo the series that a run which died (killed, power cut) left half-written,
    as its journal recorded it. With ``busy_ok`` (status), a run that is writing the
    tree right now is reported instead of refused."""
    if not journal.pending(tree.path):
        return
    try:
        with treelock.held(tree.path, "recover", notice):
            _recover_held(tree, notice)
    except treelock.Busy as busy:
        if not busy_ok:
            raise
        notice(f"{busy.what}; it is writing the tree, so what follows may change")


def _recover_held(tree: WorkTree, notice: Callable[[str], None]) -> None:
    try:
        undone = journal.roll_back(tree.path)
    except OSError as error:
        raise FaultError(
            f"restoring {tree.path} from its journal failed ({error.strerror}: "
            f"{_failed_path(error)}); {journal.folder_of(tree.path)} keeps the original "
            "files",
            "fix the cause and run again",
        ) from error
    if undone is not None:
        notice(
            f"{tree.path}: an earlier run (pid {undone.pid}) stopped while writing "
            f"{undone.what}; restored the tree as it was before that series"
            + _kept(undone)
        )


def _kept(undone: journal.Undone | None) -> str:
    """Folders the series made that others filled meanwhile: left, and said so."""
    if undone is None or not undone.kept:
        return ""
    return f" (kept {', '.join(undone.kept)}: not empty)"


def apply(
    tree: WorkTree,
    selected: list[Series],
    all_series: list[Series],
    *,
    dry_run: bool = False,
    commit: bool = False,
    allow_dirty: bool = False,
    progress: Step = lambda done, total, now: None,
    notice: Callable[[str], None] = lambda m: None,
) -> list[SeriesResult]:
    """Apply ``selected`` in order, holding the tree's lock (a dry run, which writes
    nothing, takes none); first undo what a dead run left half-written."""
    if dry_run:
        return _apply(tree, selected, all_series, True, commit, allow_dirty, progress)
    with treelock.held(tree.path, "apply", notice):
        _recover_held(tree, notice)
        return _apply(tree, selected, all_series, False, commit, allow_dirty, progress)


def _apply(
    tree: WorkTree,
    selected: list[Series],
    all_series: list[Series],
    dry_run: bool,
    commit: bool,
    allow_dirty: bool,
    progress: Step,
) -> list[SeriesResult]:
    current = _Plans(tree, all_series)
    _check_dependencies(selected, current)
    if not allow_dirty:
        _check_clean(tree, current)

    staged: dict[str, str] = {}  # what earlier series of a dry run would have written
    written: set[str] = set()  # paths this run changed, staged or on disk

    def read(path: str) -> str | None:
        return staged[path] if path in staged else tree.read(path)

    results: list[SeriesResult] = []
    for index, series in enumerate(selected):
        progress(index, len(selected), f"applying {series.name}")
        # the plan of the tree as it was holds unless this run changed one of its files
        if written.isdisjoint(series.files):
            plan = current[series.number]
        else:
            plan = plan_series(series, read)
        if plan.conflicts:
            results.append(SeriesResult(series, Outcome.CONFLICT, plan))
            results += [
                SeriesResult(
                    s, Outcome.SKIPPED, reason=f"series {series.number} conflicts"
                )
                for s in selected[index + 1 :]
            ]
            break
        changes = plan.changes
        written.update(changes)
        if not changes:
            results.append(SeriesResult(series, Outcome.ALREADY_APPLIED, plan))
            continue
        if dry_run:
            staged.update(changes)
            results.append(SeriesResult(series, Outcome.WOULD_APPLY, plan))
            continue
        sha = write(tree, plan, commit, len(all_series))
        results.append(SeriesResult(series, Outcome.APPLIED, plan, commit=sha))
    return results


def _check_dependencies(selected: list[Series], current: dict[int, SeriesPlan]) -> None:
    chosen = {s.number for s in selected}
    for series in selected:
        for dep in series.depends_on:
            if dep not in chosen and current[dep].state != SeriesState.APPLIED:
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
                if current[d].state != SeriesState.APPLIED
            ]
    return sorted(needed)


def _check_clean(tree: WorkTree, current: _Plans) -> None:
    changed = tree.changed_paths()
    ours = {
        f
        for s in current.by_number.values()
        if not set(changed).isdisjoint(s.files)
        and current[s.number].state == SeriesState.APPLIED
        for f in s.files
    }
    foreign = [p for p in changed if p not in ours]
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise UserError(
            f"{tree.path} has uncommitted changes: {shown}",
            "commit or stash them first, or pass --allow-dirty",
        )


def write(tree: WorkTree, plan: SeriesPlan, commit: bool, total: int) -> str | None:
    """Write (and commit) one series completely or not at all: the journal records the
    tree first; on any failure, Ctrl-C included, it is put back exactly as it was."""
    series = plan.series
    what = f"series {series.number} ({series.name})"
    changes = plan.changes
    where: Path | None = None  # the file being written, for the message
    try:
        record = journal.begin(tree.path, what, sorted(changes), commit)
        # every new content is written and on disk before the first one is renamed
        # over its file: a full disk fails the series before the tree changed
        for path, text in changes.items():
            where = tree.path / path
            where.parent.mkdir(parents=True, exist_ok=True)  # the journal lists them
            temp = record.temp(path)
            _fault("write", temp, text)
            temp.write_text(text)
            mode = record.mode(path)
            if mode is not None:  # a rewritten file keeps its mode, 0444 included
                os.chmod(temp, mode)
            elif path in series.overlay:  # scripts stay executable
                shutil.copymode(series.overlay_source(path), temp)
        where = None
        journal.sync([record.temp(path) for path in changes])
        for path in changes:
            where = tree.path / path
            _fault("rename")
            os.replace(record.temp(path), where)
        sha = None
        if commit:
            where = None
            title = project.current().title(series.number, total, series.title)
            message = f"{title}\n\n{series.description}\n"
            sha = tree.commit(sorted(changes), message)
            _fault("commit")
        record.close()
        return sha
    except BaseException as error:
        cause = _cause(error, what, where, tree)
        with journal.interrupts_held():
            try:
                undone = journal.roll_back(tree.path)
            except OSError as undo_error:
                raise FaultError(
                    f"{cause[0] if cause else error}, and undoing it failed too "
                    f"({undo_error.strerror}: {_failed_path(undo_error)}); "
                    f"{journal.folder_of(tree.path)} keeps the original files",
                    "fix the cause, then run `apply-patches status` to restore them",
                ) from error
        if cause is None:  # a bug, not a fault: the tree is back, the traceback shows
            raise
        raise FaultError(
            f"{cause[0]}; {what} was undone, the tree is as before{_kept(undone)}",
            *cause[1:],
        ) from error


_FIX = {
    errno.ENOSPC: "free space on that disk and run again",
    errno.EDQUOT: "free space on that disk and run again",
    errno.EACCES: "make it writable and run again",
    errno.EPERM: "make it writable and run again",
    errno.EROFS: "make it writable and run again",
}


def _cause(
    error: BaseException, what: str, where: Path | None, tree: WorkTree
) -> tuple[str, str, str] | None:
    """What failed while writing, what to do, git's text; None for a bug."""
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted while writing {what}", "run it again", ""
    if isinstance(error, subprocess.CalledProcessError):
        return (
            f"committing {what} failed ({_git_reason(error)})",
            (
                "fix that (a git identity: git config user.name and user.email; "
                "a hook; a stale .git/index.lock) and run again"
            ),
            error.stderr,
        )
    if isinstance(error, OSError):
        name = where.relative_to(tree.path) if where else error.filename
        return (
            f"writing {name} failed ({error.strerror or error})",
            _FIX.get(error.errno, "fix the cause and run again"),
            "",
        )
    return None


def _failed_path(error: OSError) -> str:
    """The file an OSError is about: a rename's target rather than its temp file."""
    return str(error.filename2 or error.filename)


def _git_reason(error: subprocess.CalledProcessError) -> str:
    """git's own reason: its fatal/error line, else its last line, else the exit code."""
    lines = [line.strip() for line in (error.stderr or "").splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal: ", "error: ")):
            return line.split(": ", 1)[1]
    return lines[-1] if lines else f"`git {error.cmd[1]}` exited {error.returncode}"


FAULT = "ATOM_CKFREE_FAULT"
RELEASE = "ATOM_CKFREE_FAULT_RELEASE"
_fault_counts: dict[str, int] = {}


def _fault(point: str, temp: Path | None = None, text: str = "") -> None:
    """TEST HOOK, not a feature: ``ATOM_CKFREE_FAULT=ACTION-at-POINT:K`` acts at the
    K-th POINT of this process — ``write`` (a file's new content, half written first),
    ``rename`` (putting it in place) or ``commit`` (after git committed). ACTION:
    ``kill`` (SIGKILL), ``sigint``, ``enospc``, ``fail`` (EIO) or ``pause`` (create
    ``$ATOM_CKFREE_FAULT_RELEASE.waiting``, wait until ``$ATOM_CKFREE_FAULT_RELEASE``
    exists). tests/faults/ uses it to stop or fail a real apply anywhere."""
    action, _, rest = os.environ.get(FAULT, "").partition("-at-")
    at, _, k = rest.partition(":")
    if at != point:
        return
    _fault_counts[point] = _fault_counts.get(point, 0) + 1
    if str(_fault_counts[point]) != k:
        return
    if temp is not None:
        temp.write_text(text[: len(text) // 2])
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
    elif action in ("enospc", "fail"):
        code = errno.ENOSPC if action == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code), str(temp))
    elif action == "pause":
        release = Path(os.environ[RELEASE])
        release.with_name(release.name + ".waiting").touch()
        while not release.exists():
            time.sleep(0.02)
