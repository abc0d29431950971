"""``apply-patches``: patch an ATOM clone with the CK-free series.

Exit codes: 0 success; 1 a series conflicts (nothing of it was written);
2 bad input (wrong path, dirty tree, unknown series, missing dependency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import DEFAULT_UPSTREAM, PIN, engine, report, upstream
from .errors import UserError
from .series import load_all, select
from .workspace import AtomTree


def _warn_if_not_pin(tree: AtomTree) -> str:
    head = tree.head()
    if head != PIN:
        report.warn(
            f"{tree.path} is at {head[:12]}, not the pin {PIN[:12]}; "
            "the series were written against the pin and may conflict"
        )
    return head


def cmd_list(args) -> int:
    series = load_all()
    if args.json:
        report.print_json(
            [
                {
                    "series": s.number,
                    "name": s.name,
                    "title": s.title,
                    "depends_on": list(s.depends_on),
                    "edits": list(s.edit_modules),
                    "overlay": list(s.overlay),
                }
                for s in series
            ]
        )
        return 0
    table = report.table("#", "series", "depends on", "files", "title")
    for s in series:
        table.add_row(str(s.number), s.slug, ",".join(map(str, s.depends_on)) or "-", str(len(s.files)), s.title)
    report.console.print(table)
    return 0


def cmd_status(args) -> int:
    tree = AtomTree(args.atom)
    head = _warn_if_not_pin(tree)
    plans = engine.status(tree, load_all())
    if args.json:
        report.print_json({"atom": str(tree.path), "head": head, "at_pin": head == PIN, "series": [report.plan_data(p) for p in plans]})
    else:
        report.show_status(plans)
    return 0


def cmd_apply(args) -> int:
    tree = AtomTree(args.atom)
    head = _warn_if_not_pin(tree)
    all_series = load_all()
    chosen = select(args.series, all_series)
    results = engine.apply(
        tree,
        chosen,
        all_series,
        dry_run=args.dry_run,
        commit=args.commit,
        allow_dirty=args.allow_dirty,
        progress=lambda s: report.errors.print(f"[dim]series {s.name} …[/]"),
    )
    if args.json:
        data = {"atom": str(tree.path), "head": head, "at_pin": head == PIN, "dry_run": args.dry_run}
        data["series"] = [report.result_data(r) for r in results]
        if args.dry_run:
            data["diff"] = "".join(r.plan.diff() for r in results if r.plan is not None)
        report.print_json(data)
    else:
        if args.dry_run:
            sys.stdout.write("".join(r.plan.diff() for r in results if r.plan is not None))
        report.show_results(results)
    return 1 if any(r.outcome == "conflict" for r in results) else 0


def cmd_checkout(args) -> int:
    sha = upstream.checkout(Path(args.dest), args.upstream, args.ref)
    if args.json:
        report.print_json({"dest": str(Path(args.dest).resolve()), "commit": sha, "branch": upstream.CHECKOUT_BRANCH})
    else:
        report.console.print(f"ATOM {sha[:12]} checked out in {args.dest} (branch {upstream.CHECKOUT_BRANCH})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apply-patches", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)

    def verb(name: str, func, help: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
        return p

    verb("list", cmd_list, "list the series, their dependencies and files")

    p = verb("status", cmd_status, "show per series: applied, not applied, partly applied or conflicting")
    p.add_argument("--atom", required=True, help="the ATOM work tree")

    p = verb("apply", cmd_apply, "apply series to an ATOM work tree, in order, each completely or not at all")
    p.add_argument("--atom", required=True, help="the ATOM work tree")
    p.add_argument("--series", default="all", help="all (default), 3, 1,2, 1-4 or 1-3,5")
    p.add_argument("--dry-run", action="store_true", help="print the unified diff; write nothing")
    p.add_argument("--commit", action="store_true", help="one git commit per series")
    p.add_argument("--allow-dirty", action="store_true", help="apply even with uncommitted changes in the tree")

    p = verb("checkout", cmd_checkout, "make a clean ATOM work tree at the pin, through the upstream cache")
    p.add_argument("dest", help="a new or empty directory")
    p.add_argument("--upstream", help=f"URL or local git directory of ATOM (default: the cache, else {DEFAULT_UPSTREAM})")
    p.add_argument("--ref", default=PIN, help="commit, branch or tag (default: the pin)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        report.error(str(error))
        return error.exit_code
