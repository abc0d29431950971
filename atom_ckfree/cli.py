"""``apply-patches``: patch an ATOM clone with the CK-free series.

Exit codes: 0 success; 1 a series conflicts or drifted (nothing of it was written);
2 bad input (wrong path, dirty tree, unknown series, missing dependency, broken
series files); 3 the environment failed (disk, permission, lock, git, interrupted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.markup import escape

from . import (
    DEFAULT_UPSTREAM,
    PIN,
    engine,
    export,
    report,
    sweep,
    treelock,
    upstream,
    verify,
)
from .errors import CkfreeError, UserError
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
        table.add_row(
            str(s.number),
            s.slug,
            ",".join(map(str, s.depends_on)) or "-",
            str(len(s.files)),
            s.title,
        )
    report.console.print(table)
    return 0


def cmd_status(args) -> int:
    tree = AtomTree(args.atom)
    engine.recover(tree, report.warn, busy_ok=True)
    head = _warn_if_not_pin(tree)
    plans = engine.status(tree, load_all())
    if args.json:
        report.print_json(
            {
                "atom": str(tree.path),
                "head": head,
                "at_pin": head == PIN,
                "series": [report.plan_data(p) for p in plans],
            }
        )
    else:
        report.show_status(plans)
    return 0


def cmd_apply(args) -> int:
    tree = AtomTree(args.atom)
    engine.recover(tree, report.warn)
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
        notice=report.warn,
    )
    if args.json:
        data = {
            "atom": str(tree.path),
            "head": head,
            "at_pin": head == PIN,
            "dry_run": args.dry_run,
        }
        data["series"] = [report.result_data(r) for r in results]
        if args.dry_run:
            data["diff"] = "".join(r.plan.diff() for r in results if r.plan is not None)
        report.print_json(data)
    else:
        if args.dry_run:
            sys.stdout.write(
                "".join(r.plan.diff() for r in results if r.plan is not None)
            )
        report.show_results(results)
    return 1 if any(r.outcome == "conflict" for r in results) else 0


def cmd_checkout(args) -> int:
    sha = upstream.checkout(Path(args.dest), args.upstream, args.ref)
    if args.json:
        report.print_json(
            {
                "dest": str(Path(args.dest).resolve()),
                "commit": sha,
                "branch": upstream.CHECKOUT_BRANCH,
            }
        )
    else:
        report.console.print(
            f"ATOM {sha[:12]} checked out in {args.dest} (branch {upstream.CHECKOUT_BRANCH})"
        )
    return 0


def cmd_export(args) -> int:
    tree = AtomTree(args.atom)
    all_series = load_all()
    name, _, email = args.author.partition("<")
    with treelock.held(tree.path, "export", report.warn):
        stack = export.export(
            tree,
            select(args.series, all_series),
            all_series,
            Path(args.out),
            base=args.base,
            pr_base=args.pr_base,
            author=(name.strip(), email.rstrip(">").strip()),
            push=args.push,
            progress=lambda s: report.errors.print(
                f"[dim]branch {export.branch_name(s)} …[/]"
            ),
        )
    commands = [
        f"gh pr create --base {e.base_branch} --head {e.branch} "
        f'--title "{e.series.title}" --body-file {e.body}'
        for e in stack
    ]
    if args.json:
        report.print_json(
            [
                {
                    "series": e.series.number,
                    "branch": e.branch,
                    "base": e.base_branch,
                    "commit": e.commit,
                    "moved": e.moved,
                    "carries": [s.number for s in e.extra],
                    "body": str(e.body),
                    "patches": [str(p) for p in e.patches],
                    "gh": command,
                }
                for e, command in zip(stack, commands)
            ]
        )
        return 0
    grid = report.table("#", "branch", "on", "commit", "moved")
    for e in stack:
        grid.add_row(
            str(e.series.number),
            e.branch,
            e.base_branch,
            e.commit[:12],
            "yes" if e.moved else "no",
        )
    report.console.print(grid)
    report.console.print("\nOpen the PRs in this order:")
    for command in commands:
        report.console.print(command, markup=False)
    return 0


def cmd_sweep(args) -> int:
    repo = upstream.cache_repo()
    if not args.offline:
        upstream.update_cache(args.upstream or DEFAULT_UPSTREAM)
    if args.range:
        start, _, end = args.range.partition("..")
        ends = [upstream.resolve(start), upstream.resolve(end or "main")]
        if None in ends:
            raise UserError(
                f"{args.range}: not a range of cached upstream commits",
                "write A..B with commits or branches",
            )
        commits = sweep.sample(repo, ends[0], ends[1], args.every)
    else:
        sha = upstream.resolve(args.ref)
        if sha is None:
            raise UserError(
                f"{args.ref} is not in the upstream cache",
                "fetch it (--upstream) or check --ref",
            )
        commits = [sha]
    checks = (
        tuple(args.checks.split(","))
        if args.checks
        else (("compile", "lint", "style") if args.range else verify.CHECKS)
    )
    unknown = set(checks) - set(verify.CHECKS)
    if unknown:
        raise UserError(
            f"unknown checks {sorted(unknown)}",
            f"choose from {','.join(verify.CHECKS)}",
        )
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(Path(args.baseline).read_text())
        except (OSError, ValueError) as error:
            raise UserError(
                f"cannot read baseline {args.baseline}: {error}",
                "give a report written by sweep --json",
            ) from error
    with treelock.held(repo, "sweep", report.warn):
        reports = sweep.sweep(
            repo,
            commits,
            load_all(),
            checks,
            pin=None if args.no_3way else PIN,
            progress=lambda i, n, c: report.errors.print(
                f"[dim]sweep {i}/{n}: {c[:12]} …[/]"
            ),
        )
    rows = sweep.survival(reports) if args.range else None
    data = {"checks": list(checks), "commits": [r.data() for r in reports]}
    if rows:
        data["survival"] = rows
    if args.markdown:
        Path(args.markdown).write_text(report.sweep_markdown(reports, rows))
    if args.json:
        report.print_json(data)
    else:
        report.show_sweep(reports, rows)
    if baseline is not None:
        worse = sweep.worse_than(reports, baseline)
        for line in worse:
            report.errors.print(f"[red]worse:[/] {escape(line)}")
        return 1 if worse else 0
    return 0 if all(v.verdict in sweep.GOOD for v in reports[-1].verdicts) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apply-patches",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    def verb(name: str, func, help: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument(
            "--json", action="store_true", help="print a JSON report on stdout"
        )
        return p

    verb("list", cmd_list, "list the series, their dependencies and files")

    p = verb(
        "status",
        cmd_status,
        "show per series: applied, not applied, partly applied or conflicting",
    )
    p.add_argument("--atom", required=True, help="the ATOM work tree")

    p = verb(
        "apply",
        cmd_apply,
        "apply series to an ATOM work tree, in order, each completely or not at all",
    )
    p.add_argument("--atom", required=True, help="the ATOM work tree")
    p.add_argument(
        "--series", default="all", help="all (default), 3, 1,2, 1-4 or 1-3,5"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the unified diff; write nothing"
    )
    p.add_argument("--commit", action="store_true", help="one git commit per series")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="apply even with uncommitted changes in the tree",
    )

    p = verb(
        "checkout",
        cmd_checkout,
        "make a clean ATOM work tree at the pin, through the upstream cache",
    )
    p.add_argument("dest", help="a new or empty directory")
    p.add_argument(
        "--upstream",
        help=f"URL or local git directory of ATOM (default: the cache, else {DEFAULT_UPSTREAM})",
    )
    p.add_argument(
        "--ref", default=PIN, help="commit, branch or tag (default: the pin)"
    )
    p = verb(
        "export",
        cmd_export,
        "build the stacked PR branches ck-free/NN-slug, PR bodies and patches",
    )
    p.add_argument(
        "--atom",
        required=True,
        help="a clean ATOM work tree (its repository gets the branches)",
    )
    p.add_argument("--series", default="all", help="which series (default all)")
    p.add_argument(
        "--base", default="HEAD", help="the commit the stack starts from (default HEAD)"
    )
    p.add_argument(
        "--pr-base",
        default="main",
        help="upstream branch the first PRs target (default main)",
    )
    p.add_argument(
        "--out", default="ck-free-export", help="folder for PR bodies and patches"
    )
    p.add_argument(
        "--author",
        default="atom-ckfree <atom-ckfree@users.noreply.github.com>",
        help='author and committer of the commits, "Name <email>"',
    )
    p.add_argument(
        "--push",
        metavar="REMOTE",
        help="push the branches to REMOTE (--force-with-lease)",
    )
    p = verb(
        "sweep",
        cmd_sweep,
        "apply every series onto upstream in a scratch tree and verify the result",
    )
    p.add_argument(
        "--upstream",
        help=f"URL or git directory to fetch first (default {DEFAULT_UPSTREAM})",
    )
    p.add_argument(
        "--offline", action="store_true", help="use the cache as it is; fetch nothing"
    )
    p.add_argument(
        "--ref",
        default="main",
        help="the upstream commit to sweep onto (default: newest main)",
    )
    p.add_argument(
        "--range", help="A..B: sweep a span of upstream history (first-parent)"
    )
    p.add_argument(
        "--every",
        type=int,
        default=25,
        help="with --range: every Nth commit (default 25)",
    )
    p.add_argument(
        "--checks",
        help=f"comma list of {','.join(verify.CHECKS)} (default: all; with --range no tests)",
    )
    p.add_argument(
        "--baseline",
        help="an earlier sweep --json report; exit 1 only if something got worse",
    )
    p.add_argument("--markdown", help="also write the report as markdown to this file")
    p.add_argument(
        "--no-3way", action="store_true", help="skip the git apply --3way comparison"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CkfreeError as error:
        report.error(str(error))
        return error.exit_code
