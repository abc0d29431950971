"""Errors the CLI turns into one-line messages and an exit code.

Exit codes: 0 ok; 1 a series conflicts or drifted; 2 bad input (a user's arguments or
a series author's files); 3 the environment failed (disk, permission, lock, git,
interrupted). Every error says what happened, where, and what to do; the text of the
tool that failed (git's, usually) may follow as ``detail``, trimmed, on indented lines.
"""

from __future__ import annotations

DETAIL_LINES = 4


class CkfreeError(Exception):
    """Base of every error the CLI reports without a traceback."""

    exit_code = 2

    def __init__(self, what: str, fix: str = "", detail: str = ""):
        super().__init__(what)
        self.what = what
        self.fix = fix
        self.detail = trimmed(detail)

    @property
    def message(self) -> str:
        """The one line: what happened and where — what to do."""
        return f"{self.what} — {self.fix}" if self.fix else self.what

    def data(self) -> dict:
        """The error as ``--json`` prints it on stdout."""
        data = {"error": self.what, "fix": self.fix, "exit_code": self.exit_code}
        if self.detail:
            data["detail"] = self.detail
        return data

    def __str__(self) -> str:
        if not self.detail:
            return self.message
        return (
            self.message
            + "\n"
            + "\n".join(f"    {d}" for d in self.detail.splitlines())
        )


class UserError(CkfreeError):
    """Bad input: a wrong path, a dirty tree, an unknown series, a bad option."""

    exit_code = 2


class SeriesError(UserError):
    """The patch set itself is inconsistent: a manifest or an edits module is wrong."""

    def __init__(self, what: str, detail: str = ""):
        super().__init__(
            what, "fix the series under patches/ (see README: Writing an edit)", detail
        )


class DriftError(CkfreeError):
    """A series conflicts with the tree or drifted upstream; nothing of it was written."""

    exit_code = 1


class FaultError(CkfreeError):
    """The environment failed: disk full, permission, a lock held, git, an interrupt."""

    exit_code = 3


def trimmed(text: str | None, lines: int = DETAIL_LINES) -> str:
    """A tool's output cut to its last meaningful ``lines`` lines (errors come last)."""
    kept = [line.rstrip() for line in (text or "").strip().splitlines() if line.strip()]
    if len(kept) > lines:
        kept = ["…", *kept[-lines:]]
    return "\n".join(kept)
