"""Errors the CLI turns into one-line messages and a non-zero exit code."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: says what happened and what to do about it."""

    exit_code = 2

    def __init__(self, what: str, fix: str = ""):
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what
