"""``apply-patches``: patch an ATOM clone with the CK-free series.

Exit codes: 0 success; 1 a series conflicts or drifted (nothing of it was written);
2 bad input (wrong path, dirty tree, unknown series, missing dependency, broken
series files); 3 the environment failed (disk, permission, lock, git, interrupted).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.markup import escape

from . import (
    engine,
    export,
    project,
    regen,
    report,
    sweep,
    treelock,
    upstream,
    verify,
)
from .errors import CkfreeError, DriftError, FaultError, UserError
from .series import load_all, select
from .states import Outcome, SeriesState
from .workspace import WorkTree


def _warn_if_not_pin(tree: WorkTree) -> str:
    head = tree.head()
    # the pin with the tool's own series commits on top (apply --commit) is the pin
    pin = project.current().pin
    if head != pin and export.below_series_commits(tree.path, head)[0] != pin:
        report.warn(
            f"{tree.path} is at {head[:12]}, not the pin {pin[:12]}; "
            "the series were written against the pin and may conflict"
        )
    return head


def cmd_list(args) -> int:
    series = load_all()
    if args.json:
        report.print_json([report.series_data(s) for s in series])
    else:
        report.show_list(series)
    return 0


def cmd_status(args) -> int:
    tree = WorkTree(args.atom)
    engine.recover(tree, report.warn, busy_ok=True)
    head = _warn_if_not_pin(tree)
    with report.progress("status") as step:
        plans = engine.status(tree, load_all(), step)
    if args.json:
        report.print_json(
            {
                "atom": str(tree.path),
                "head": head,
                "at_pin": head == project.current().pin,
                "series": [report.plan_data(p) for p in plans],
            }
        )
    else:
        report.show_status(plans)
    return 1 if any(p.state == SeriesState.CONFLICTING for p in plans) else 0


def cmd_apply(args) -> int:
    tree = WorkTree(args.atom)
    engine.recover(tree, report.warn)
    head = _warn_if_not_pin(tree)
    all_series = load_all()
    chosen = select(args.series, all_series)
    with report.progress("apply") as step:
        results = engine.apply(
            tree,
            chosen,
            all_series,
            dry_run=args.dry_run,
            commit=args.commit,
            allow_dirty=args.allow_dirty,
            progress=step,
            notice=report.warn,
        )
    if args.json:
        data = {
            "atom": str(tree.path),
            "head": head,
            "at_pin": head == project.current().pin,
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
    return 1 if any(r.outcome == Outcome.CONFLICT for r in results) else 0


def cmd_checkout(args) -> int:
    if args.aiter_upstream:
        # AITER's history for the aiter tests and AMD builds (aiter_source)
        upstream.update_cache(args.aiter_upstream, "main", required=True, name="aiter")
    sha = upstream.checkout(Path(args.dest), args.upstream, args.ref)
    if args.json:
        report.print_json(
            {
                "dest": str(Path(args.dest).resolve()),
                "commit": sha,
                "branch": project.current().checkout_branch,
            }
        )
    else:
        report.console.print(
            f"{project.current().name} {sha[:12]} checked out in {args.dest} "
            f"(branch {project.current().checkout_branch})"
        )
    return 0


def cmd_export(args) -> int:
    tree = WorkTree(args.atom)
    all_series = load_all()
    name, _, email = args.author.partition("<")
    with (
        treelock.held(tree.path, "export", report.warn),
        report.progress("export") as step,
    ):
        stack = export.export(
            tree,
            select(args.series, all_series),
            all_series,
            Path(args.out),
            base=args.base,
            pr_base=args.pr_base,
            author=(name.strip(), email.rstrip(">").strip()),
            push=args.push,
            progress=step,
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
    # every input is checked before the fetch and the sweep, which take minutes
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(Path(args.baseline).read_text())
        except (OSError, ValueError) as error:
            raise UserError(
                f"cannot read baseline {args.baseline}: {error}",
                "give a report written by sweep --json",
            ) from error
        sweep.check_baseline(baseline, args.baseline)
    if args.markdown and Path(args.markdown).is_dir():
        raise UserError(
            f"--markdown {args.markdown} is a directory", "give it a file name"
        )
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
    repo = upstream.cache_repo()
    if not args.offline:
        upstream.update_cache(
            args.upstream or project.current().url, required=args.upstream is not None
        )
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
    with treelock.held(repo, "sweep", report.warn), report.progress("sweep") as step:
        reports = sweep.sweep(
            repo,
            commits,
            load_all(),
            checks,
            pin=None if args.no_3way else project.current().pin,
            progress=step,
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
    return 0 if all(v.verdict.good for v in reports[-1].verdicts) else 1


def cmd_regen(args) -> int:
    expected = regen.every_base(load_all())
    stale = [e for e in expected if not e.current]
    if not args.check:
        regen.write(expected)
    if args.json:
        report.print_json(
            [
                {
                    "series": e.series.number,
                    "name": e.series.name,
                    "base": e.base,
                    "expected": str(e.path),
                    "current": e.current,
                }
                for e in expected
            ]
        )
    else:
        verb = "stale" if args.check else "written"
        for e in expected:
            state = "current" if e.current else verb
            report.console.print(f"{e.series.name} on {e.base}: {state}", markup=False)
    if args.check and stale:
        raise DriftError(
            "expected diffs out of date: "
            + ", ".join(f"{e.series.name} on {e.base}" for e in stale),
            "run `apply-patches regen` and review the change to expected/<base>.diff",
        )
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one error line, like every error."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}", f"see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        help="URL or local git directory of the upstream (default: the cache, else "
        "the manifest's URL)",
    )
    p.add_argument("--ref", help="commit, branch or tag (default: the pin)")
    p.add_argument(
        "--aiter-upstream",
        metavar="URL_OR_PATH",
        help="also fetch AITER's main from this URL or git directory into the cache "
        "(the source of the aiter tests and the AMD builds)",
    )
    p = verb(
        "export",
        cmd_export,
        "build the stacked PR branches (PREFIX/NN-slug), PR bodies and patches",
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
        help="URL or git directory to fetch first (default: the manifest's URL)",
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
        type=_positive,
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
    p = verb(
        "regen",
        cmd_regen,
        "write each series' effect on each base (pin, main) to patches/NN-slug/expected/<base>.diff",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming the series whose expected diff is stale",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            args = build_parser().parse_args(argv)
            return args.func(args)
        except subprocess.CalledProcessError as error:
            raise FaultError(
                f"`{' '.join(error.cmd[:2])}` failed unexpectedly (exit {error.returncode})",
                "check the repository and the disk, then run again",
                error.stderr,
            ) from error
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            raise FaultError(
                f"{error.strerror or error}{where}",
                "check that path, the disk and the permissions, then run again",
            ) from error
        except KeyboardInterrupt as error:
            raise FaultError(
                "interrupted",
                "run the command again; `apply-patches status` shows the tree's state",
            ) from error
    except CkfreeError as error:
        report.error(str(error))
        if "--json" in argv:
            report.print_json(error.data())
        return error.exit_code
