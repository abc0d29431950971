"""Results as data (for ``--json``) and as terminal tables."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .engine import SeriesPlan, SeriesResult, Step, Unit
from .series import Series
from .states import Outcome, SeriesState, UnitState

console = Console(stderr=False, highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

_STYLE = {
    Outcome.APPLIED: "green",
    Outcome.ALREADY_APPLIED: "green",
    Outcome.WOULD_APPLY: "cyan",
    SeriesState.NOT_APPLIED: "yellow",
    SeriesState.PARTLY_APPLIED: "yellow",
    Outcome.CONFLICT: "red",
    SeriesState.CONFLICTING: "red",
    Outcome.SKIPPED: "dim",
}


def conflict_data(unit: Unit) -> dict[str, Any]:
    c = unit.conflict
    return {
        "file": unit.file,
        "line": c.line,
        "edit": unit.id,
        "expected": c.expected,
        "found": c.found,
    }


def conflict_text(series_number: int, unit: Unit) -> str:
    c = unit.conflict
    where = f"{unit.file}:{c.line}" if c.line else unit.file
    return f"series {series_number}, edit {unit.id}, {where}: expected {c.expected}; found {c.found}"


def plan_data(plan: SeriesPlan) -> dict[str, Any]:
    s = plan.series
    return {
        "series": s.number,
        "name": s.name,
        "title": s.title,
        "state": plan.state,
        "units": [{"file": u.file, "edit": u.id, "state": u.state} for u in plan.units],
        "conflicts": [conflict_data(u) for u in plan.conflicts],
    }


def result_data(result: SeriesResult) -> dict[str, Any]:
    s = result.series
    data: dict[str, Any] = {
        "series": s.number,
        "name": s.name,
        "title": s.title,
        "outcome": result.outcome,
    }
    if result.plan is not None:
        data["files"] = sorted(result.plan.changes)
        data["conflicts"] = [conflict_data(u) for u in result.plan.conflicts]
    if result.commit:
        data["commit"] = result.commit
    if result.reason:
        data["reason"] = result.reason
    return data


def error(text: str) -> None:
    errors.print(f"[red]error:[/] {escape(text)}")


def warn(text: str) -> None:
    errors.print(f"[yellow]warning:[/] {escape(text)}")


@contextmanager
def progress(verb: str) -> Iterator[Step]:
    """The progress of a long verb, on stderr so that ``--json`` stdout stays clean;
    what it yields is the ``progress`` callback of ``engine.apply``, ``export.export``
    and ``sweep.sweep``.

    On a terminal a live bar: what runs now, done/total, elapsed time. Anywhere else
    (a log, CI) no control codes: one plain line per step, and one when it is done.
    """
    seen = {"done": 0, "total": 0}
    if not errors.is_terminal or errors.is_dumb_terminal:
        start = time.monotonic()

        def line(done: int, total: int, now: str) -> None:
            seen.update(done=done, total=total)
            errors.print(
                f"{verb} {done + 1}/{total} [{time.monotonic() - start:.1f} s] {now}",
                markup=False,
            )

        yield line
        if seen["total"]:
            errors.print(
                f"{verb} done [{time.monotonic() - start:.1f} s]", markup=False
            )
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[now]}"),
        console=errors,
    ) as bar:
        task = bar.add_task(verb, total=None, now="")

        def step(done: int, total: int, now: str) -> None:
            seen.update(done=done, total=total)
            bar.update(task, completed=done, total=total, now=escape(now))

        yield step
        # the last step reported has finished too
        bar.update(
            task,
            completed=min(seen["done"] + 1, seen["total"]),
            total=seen["total"],
            now="done",
        )


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def table(*columns: str) -> Table:
    grid = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in columns:
        grid.add_column(column)
    return grid


def _styled(word: str) -> str:
    return f"[{_STYLE.get(word, '')}]{word}[/]" if word in _STYLE else word


def series_data(series: Series) -> dict[str, Any]:
    return {
        "series": series.number,
        "name": series.name,
        "title": series.title,
        "depends_on": list(series.depends_on),
        "files": list(series.files),
        "edits": list(series.edit_modules),
        "overlay": list(series.overlay),
        "tests": {"atom": list(series.atom_tests), "ckfree": list(series.ckfree_tests)},
    }


def show_list(all_series: list[Series]) -> None:
    """Each series with its title and, under it, the ATOM files it edits and adds."""
    grid = table("#", "series", "depends on", "title and files")
    for s in all_series:
        files = Table.grid(padding=(0, 1))
        files.add_column(style="dim", min_width=5)
        files.add_column()
        for how, paths in (("edits", s.edit_modules), ("adds", s.overlay)):
            if paths:
                files.add_row(how, escape("\n".join(paths)))
        grid.add_row(
            str(s.number),
            s.slug,
            ",".join(map(str, s.depends_on)) or "-",
            Group(f"[bold]{escape(s.title)}[/]", files, ""),
        )
    console.print(grid)


def show_status(plans: list[SeriesPlan]) -> None:
    grid = table("#", "series", "state", "edits applied", "title")
    for plan in plans:
        done = sum(u.state == UnitState.APPLIED for u in plan.units)
        grid.add_row(
            str(plan.series.number),
            plan.series.slug,
            _styled(plan.state),
            f"{done}/{len(plan.units)}",
            plan.series.title,
        )
    console.print(grid)
    for plan in plans:
        for unit in plan.conflicts:
            errors.print(
                f"[red]conflict[/] {escape(conflict_text(plan.series.number, unit))}"
            )


def show_results(results: list[SeriesResult]) -> None:
    grid = table("#", "series", "outcome", "files", "commit")
    for r in results:
        files = len(r.plan.changes) if r.plan is not None else 0
        grid.add_row(
            str(r.series.number),
            r.series.slug,
            _styled(r.outcome),
            str(files),
            (r.commit or "")[:12],
        )
    console.print(grid)
    for r in results:
        if r.plan is not None:
            for unit in r.plan.conflicts:
                errors.print(
                    f"[red]conflict[/] {escape(conflict_text(r.series.number, unit))}"
                )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _tests_cell(tests: dict | None) -> str:
    """The tests check's count before → after a series ("–" when not run)."""
    if not tests:
        return "–"
    return f"{tests['tests_before']} → {tests.get('tests_after', '–')}"


def sweep_markdown(reports, rows: list[dict] | None) -> str:
    """The sweep for an issue or a job summary."""
    last = reports[-1]
    lines = [
        f"## atom-ckfree sweep onto ATOM `{last.commit[:12]}` ({last.date}): {_cell(last.subject)}",
        "",
        "| # | series | verdict | already upstream | `git apply --3way` | tests run | details |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in last.verdicts:
        three = {True: "applies", False: "fails", None: "–"}[v.three_way]
        detail = "<br>".join(_cell(d) for d in v.details[:5]) + (
            " …" if len(v.details) > 5 else ""
        )
        if v.culprit:
            detail += f"<br>broken by upstream `{v.culprit[:12]}`"
        lines.append(
            f"| {v.series} | {v.name} | **{v.verdict}** | {len(v.upstream_edits)} edits | {three} | {_tests_cell(v.tests)} | {detail} |"
        )
    if rows:
        lines += [
            "",
            (
                f"### History: {len(reports)} upstream commits sampled, "
                f"`{reports[0].commit[:12]}` ({reports[0].date}) to `{last.commit[:12]}` ({last.date})"
            ),
            "",
            "| # | series | good samples | first break (semantic) | culprit | `--3way` good samples | first break (`--3way`) |",
            "|---|---|---|---|---|---|---|",
        ]
        dates = {r.commit: r.date for r in reports}
        for row in rows:
            brk = row["first_break"]
            brk3 = row["three_way_first_break"]
            lines.append(
                f"| {row['series']} | {row['name']} | {row['good_samples']}/{row['samples']} | "
                + (
                    f"`{brk[:12]}` ({dates[brk]}, {row['first_break_verdict']})"
                    if brk
                    else "never"
                )
                + f" | {('`' + row['culprit'][:12] + '`') if row['culprit'] else '–'} | "
                + f"{row['three_way_good_samples']}/{row['samples']} | "
                + (f"`{brk3[:12]}` ({dates[brk3]})" if brk3 else "never")
                + " |"
            )
    return "\n".join(lines) + "\n"


def show_sweep(reports, rows: list[dict] | None) -> None:
    last = reports[-1]
    console.print(f"ATOM {last.commit[:12]} ({last.date}) {escape(last.subject)}")
    grid = table("#", "series", "verdict", "upstream", "--3way", "tests", "problems")
    for v in last.verdicts:
        grid.add_row(
            str(v.series),
            v.name,
            v.verdict,
            str(len(v.upstream_edits)),
            {True: "applies", False: "fails", None: "-"}[v.three_way],
            _tests_cell(v.tests),
            str(len(v.details)),
        )
    console.print(grid)
    # the problems under the table, at the console's full width, so that they wrap
    # between words instead of being cut in a narrow column
    problems = table("#", "first problem")
    for v in last.verdicts:
        if v.details:
            problems.add_row(str(v.series), escape(v.details[0]))
    if problems.row_count:
        console.print()
        console.print(problems)
    if rows:
        grid = table(
            "#",
            "series",
            "good",
            "first break",
            "culprit",
            "--3way good",
            "--3way break",
        )
        for row in rows:
            grid.add_row(
                str(row["series"]),
                row["name"],
                f"{row['good_samples']}/{row['samples']}",
                (row["first_break"] or "never")[:12],
                (row["culprit"] or "-")[:12],
                f"{row['three_way_good_samples']}/{row['samples']}",
                (row["three_way_first_break"] or "never")[:12],
            )
        console.print()
        console.print(grid)
    console.print(
        "\nFull report: --json (every problem at every commit), or --markdown FILE."
    )
