#!/usr/bin/env python3
"""Break the change set on purpose and check that the tests notice.

Each mutation in ``tests/mutations.toml`` replaces one exact, unique piece of text
in one file of the project (a series' edit or snippet, an overlay module) and names
the tests that must then fail. For every mutation the check makes a detached git
worktree of HEAD in a temporary folder (the checkout you work in is never touched),
applies the mutation there, runs those tests with this interpreter and reports
whether they failed (``caught``) or passed (``SURVIVED``). A first run of all the
named tests on HEAD unmutated must pass (``--no-baseline`` skips it). Exits 1 when
a mutation survives or no longer applies, or the baseline fails.

    tools/mutation_check.py [--only ID[,ID...]] [--no-baseline] [--json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomlkit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atom_ckfree import report

MUTATIONS = ROOT / "tests" / "mutations.toml"


def load(only: set[str] | None) -> list[dict]:
    mutations = tomlkit.parse(MUTATIONS.read_text()).unwrap()["mutation"]
    known = {m["id"] for m in mutations}
    unknown = (only or set()) - known
    if unknown:
        raise SystemExit(
            f"error: no mutation {', '.join(sorted(unknown))} in {MUTATIONS.name}"
        )
    return [m for m in mutations if only is None or m["id"] in only]


def mutate(tree: Path, mutation: dict) -> str | None:
    """Apply ``mutation`` in ``tree``; the reason when it cannot be applied."""
    path = tree / mutation["file"]
    if not path.is_file():
        return f"{mutation['file']} does not exist"
    text = path.read_text()
    count = text.count(mutation["old"])
    if count != 1:
        return f"the text to replace occurs {count} times in {mutation['file']}"
    path.write_text(text.replace(mutation["old"], mutation["new"]))
    return None


def run_tests(tree: Path, tests: list[str]) -> tuple[int, str]:
    """pytest's exit status on ``tests`` in ``tree``, and its summary line."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-200:]


def check(mutation: dict) -> dict:
    """One mutation's verdict; ``mutation`` without ``old`` is the baseline (HEAD as
    it is, whose tests must pass)."""
    with tempfile.TemporaryDirectory(prefix="ckfree-mutant-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(tree), "HEAD"],
            cwd=ROOT,
            check=True,
        )
        try:
            problem = mutate(tree, mutation) if "old" in mutation else None
            if problem:
                return {
                    "id": mutation["id"],
                    "verdict": "not applied",
                    "detail": problem,
                }
            start = time.monotonic()
            status, summary = run_tests(tree, mutation["tests"])
            if "old" not in mutation:
                verdict = "passes" if status == 0 else "FAILS"
            else:
                verdict = {0: "SURVIVED", 1: "caught"}.get(status, "error")
            return {
                "id": mutation["id"],
                "verdict": verdict,
                "detail": summary,
                "seconds": round(time.monotonic() - start, 1),
            }
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)],
                cwd=ROOT,
                check=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutation ids")
    parser.add_argument("--json", action="store_true", help="the results as JSON")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the first run, of the named tests on HEAD unmutated",
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    mutations = load(only)
    if not args.no_baseline:
        tests = sorted({t for m in mutations for t in m["tests"]})
        baseline = {"id": "baseline", "what": "HEAD unmutated", "tests": tests}
        mutations = [baseline, *mutations]
    results = []
    with report.progress("mutating") as step:
        for done, mutation in enumerate(mutations):
            step(done, len(mutations), mutation["id"])
            results.append({**check(mutation), "what": mutation["what"]})
    if args.json:
        report.print_json(results)
    else:
        grid = report.table("mutation", "what", "verdict", "tests said")
        for r in results:
            style = "green" if r["verdict"] in ("caught", "passes") else "red"
            grid.add_row(r["id"], r["what"], f"[{style}]{r['verdict']}[/]", r["detail"])
        report.console.print(grid)
    return 0 if all(r["verdict"] in ("caught", "passes") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
